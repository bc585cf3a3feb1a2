"""Teacher-forced statistics of a pair: one forward per model equals the position-by-position reference, a target
drafting for itself agrees everywhere, and a bench run's records become the cost model's input."""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from adasd_jax import models
from adasd_jax.bench import cost_model as cm
from adasd_jax.bench import teacher_forced as tf
from adasd_jax.bench.datasets import GSM8K_INSTRUCTION
from adasd_jax.divergence import entropy, js_distance


def test_one_forward_equals_the_position_by_position_reference(tiny_pair, prompts):
    prompt, cont = prompts[0], prompts[1]
    s = tf.statistics(tiny_pair, prompt, cont)
    assert all(len(s[k]) == len(cont) for k in tf.KEYS)

    def last_logits(m, ids):  # a fresh cache per prefix, only the last position's logits
        cache = models.init_cache(m.config, 1, len(ids), jnp.float32)
        return models.forward(m.params, m.config, jnp.asarray([ids]), cache)[0][0, -1]

    for i in range(len(cont)):
        ids = prompt + cont[:i]
        lp, lq = last_logits(tiny_pair.target, ids), last_logits(tiny_pair.draft, ids)
        p, q = jax.nn.softmax(lp), jax.nn.softmax(lq)
        assert s["match"][i] == (int(jnp.argmax(lp)) == int(jnp.argmax(lq)))
        np.testing.assert_allclose([s["d"][i], s["e"][i], s["t"][i], s["a"][i]],
                                   [js_distance(p, q), entropy(lq), q.max(), jnp.minimum(p, q).sum()], atol=2e-5)
    assert 0 < s["match"].mean() < 1  # the tiny pair both agrees and disagrees


def test_a_target_drafting_for_itself_agrees_everywhere(tiny_pair, prompts):
    twin = dataclasses.replace(tiny_pair, draft=tiny_pair.target)
    s = tf.statistics(twin, prompts[2], prompts[0] + prompts[1])
    assert s["match"].all() and np.all(s["d"] == 0)
    np.testing.assert_allclose(s["a"], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="non-empty"):
        tf.statistics(twin, prompts[0], [])


def test_a_bench_runs_records_become_the_cost_models_input(hf_pair, tmp_path):
    from conftest import gsm8k_file

    from adasd_jax import engine, loading

    draft_dir, target_dir = hf_pair
    data = gsm8k_file(tmp_path, 3, 10, 40)
    pair = loading.load_pair(draft=draft_dir, target=target_dir)
    conts = [[7, 8, 9, 10], [11, 12], [13, 14, 15]]
    results = {"config": {"dataset": "gsm8k", "data_file": str(data), "limit": 2, "offset": 1, "dtype": "float32",
                          "quantize": "none", "models": {"draft": {"source": str(draft_dir)},
                                                         "target": {"source": str(target_dir)}}},
               "records": {"sd:K=4": [{"problem": f"gsm8k/{i + 1}", "tokens": conts[i]} for i in range(2)]}}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    out = tmp_path / "tf.npz"
    assert tf.main([str(path), str(out)]) == 0
    seqs = cm.load(str(out))
    assert [len(s["match"]) for s in seqs] == [4, 2] and set(seqs[0]) == {"match", "d", "e", "a", "t"}
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    prompt = engine.encode(pair, [rows[2]["question"] + GSM8K_INSTRUCTION], True)[0]
    np.testing.assert_allclose(seqs[1]["d"], tf.statistics(pair, prompt, conts[1])["d"], atol=1e-6)
    assert not list(tmp_path.glob("*.partial*"))  # written atomically
    with pytest.raises(ValueError, match="no records of 'adasd'"):
        tf.main([str(path), str(out), "--method", "adasd"])
