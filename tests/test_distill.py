"""`adasd distill`: the loss and its gradient, training, checkpoint/resume, data errors, the saved draft."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_tiny_pair

import adasd_jax
from adasd_jax import models
from adasd_jax import cli, distill

F32 = dict(compute_dtype="float32")


@pytest.fixture(scope="module")
def pair():
    return make_tiny_pair()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 96, int(n)).tolist() for n in rng.integers(5, 40, 24)]
    return distill.pack(docs, 32)


def make_run(pair, data, train_dir, steps=6, ckpt_every=2, **kw):
    h = distill.Hyper(steps=steps, batch_size=4, seq_len=32, lr=3e-3, warmup=2, **{**F32, **kw})
    train_dir.mkdir(parents=True, exist_ok=True)
    return distill.Run(h=h, draft_config=pair.draft.config, init_params=pair.draft.params,
                       target_config=pair.target.config, target_params=pair.target.params, tokens=data[0],
                       mask=data[1], segments=data[2], train_dir=train_dir, ckpt_every=ckpt_every)


@pytest.mark.parametrize("loss,dtype", [("kl", "float32"), ("tv", "float32"), ("kl", "bfloat16")])
def test_train_steps_reduce_the_loss(pair, data, loss, dtype):
    h = distill.Hyper(steps=8, batch_size=4, seq_len=32, lr=3e-3, warmup=1, loss=loss, compute_dtype=dtype)
    state = distill.init_state(pair.draft.params, h)
    step = distill.make_train_step(h, pair.draft.config, pair.target.config)
    tokens, mask, segments = (jnp.asarray(x[:4]) for x in data)
    losses = []
    for _ in range(h.steps):
        state, loss_value = step(state, pair.target.params, tokens, mask, segments)
        losses.append(float(loss_value))
    assert losses[-1] < 0.8 * losses[0] and losses[-1] == min(losses), losses
    assert all(a.dtype == jnp.float32 for a in jax.tree.leaves(state.params))  # master weights stay float32
    assert int(state.step) == h.steps
    # the target is untouched and the draft was copied, not donated away
    assert np.isfinite(np.asarray(pair.draft.params["layers"][0]["wq"])).all()


def test_loss_is_zero_for_the_target_itself(pair, data):
    """Distilling the target into a copy of itself: KL and TV vanish (the divergences are real ones)."""
    tokens, mask = jnp.asarray(data[0][:2]), jnp.asarray(data[1][:2])
    tl = distill.logits_of(pair.target.params, pair.target.config, tokens, jnp.float32)
    for loss in ("kl", "tv"):
        h = distill.Hyper(loss=loss, **F32)
        assert float(distill.distill_loss(pair.target.params, pair.target.config, tl, tokens, mask, h)) < 1e-5
        assert float(distill.distill_loss(pair.draft.params, pair.draft.config, tl, tokens, mask, h)) > 1e-2


def test_gradient_matches_finite_differences(pair, data):
    h = distill.Hyper(**F32)
    tokens, mask = jnp.asarray(data[0][:2, :16]), jnp.asarray(data[1][:2, :16])
    tl = distill.logits_of(pair.target.params, pair.target.config, tokens, jnp.float32)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), pair.draft.params)
    loss = jax.jit(lambda p: distill.distill_loss(p, pair.draft.config, tl, tokens, mask, h))
    grads = jax.grad(loss)(params)
    keys = jax.random.split(jax.random.key(1), len(jax.tree.leaves(params)))
    leaves, tree = jax.tree.flatten(params)
    direction = jax.tree.unflatten(tree, [jax.random.normal(k, a.shape) * jnp.std(a) for k, a in zip(keys, leaves)])
    analytic = sum(float(jnp.vdot(g, v)) for g, v in zip(jax.tree.leaves(grads), jax.tree.leaves(direction)))
    eps = 1e-2
    shift = lambda s: jax.tree.map(lambda p, v: p + s * v, params, direction)
    numeric = (float(loss(shift(eps))) - float(loss(shift(-eps)))) / (2 * eps)
    assert abs(analytic) > 1e-2
    assert numeric == pytest.approx(analytic, rel=2e-2)
    # and per parameter group: the embedding alone, one layer's matrix alone
    for name in ("['embed']", "['layers'][1]['w_down']"):
        one = jax.tree_util.tree_map_with_path(
            lambda path, d, name=name: d if jax.tree_util.keystr(path) == name else jnp.zeros_like(d), direction)
        a = sum(float(jnp.vdot(g, d)) for g, d in zip(jax.tree.leaves(grads), jax.tree.leaves(one)))
        n = (float(loss(jax.tree.map(lambda p, d: p + eps * d, params, one)))
             - float(loss(jax.tree.map(lambda p, d: p - eps * d, params, one)))) / (2 * eps)
        assert abs(a) > 1e-4, name
        assert n == pytest.approx(a, rel=5e-2), name


def test_resume_after_interruption_is_bit_identical(pair, data, tmp_path):
    whole = distill.train(make_run(pair, data, tmp_path / "whole"), progress=False)

    def interrupt(step, loss):
        if step == 5:
            raise KeyboardInterrupt

    run = make_run(pair, data, tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        distill.train(run, progress=False, on_step=interrupt)
    assert distill.Checkpoints(run.train_dir / "checkpoints", 2).latest() == 4  # step 5 was lost, 4 survives
    resumed = distill.train(run, progress=False)
    assert int(resumed.step) == 6
    for a, b in zip(jax.tree.leaves(whole.params), jax.tree.leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for a, b in zip(jax.tree.leaves(whole.opt_state), jax.tree.leaves(resumed.opt_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    log = lambda d: [json.loads(x)["loss"] for x in (d / "log.jsonl").read_text().splitlines()]
    assert log(tmp_path / "cut") == log(tmp_path / "whole") and len(log(tmp_path / "whole")) == 6


def test_data_order_is_a_function_of_seed_and_epoch():
    a = [distill.batch_indices(s, 10, 3, seed=0).tolist() for s in range(6)]
    assert a == [distill.batch_indices(s, 10, 3, seed=0).tolist() for s in range(6)]
    first_epoch = [i for batch in a[:3] for i in batch]
    assert len(first_epoch) == len(set(first_epoch))  # no repeats inside an epoch
    assert a[:3] != a[3:6]  # a new permutation each epoch
    assert a != [distill.batch_indices(s, 10, 3, seed=1).tolist() for s in range(6)]
    assert len(distill.batch_indices(0, 2, 4, seed=0)) == 4  # fewer rows than a batch: repeated


def test_pack_masks_only_the_tail():
    tokens, mask, segments = distill.pack([[5, 6, 7], [8, 9]], 4)
    assert tokens.tolist() == [[5, 6, 7, 8], [9, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
    assert segments.tolist() == [[0, 0, 0, 1], [1, -1, -1, -1]]


def test_packed_documents_do_not_attend_to_each_other(pair):
    """A document packed after another gets the logits it gets alone (positions shifted: RoPE is relative)."""
    first, second = [5, 9, 14, 20, 33], [7, 41, 8, 60]
    tokens, _, segments = distill.pack([first, second], 9)
    both = distill.logits_of(pair.target.params, pair.target.config, jnp.asarray(tokens), jnp.float32,
                             jnp.asarray(segments))
    alone = distill.logits_of(pair.target.params, pair.target.config, jnp.asarray([second]), jnp.float32)
    np.testing.assert_allclose(np.asarray(both[0, 5:]), np.asarray(alone[0]), atol=2e-4, rtol=2e-4)
    leaky = distill.logits_of(pair.target.params, pair.target.config, jnp.asarray(tokens), jnp.float32)
    assert np.abs(np.asarray(leaky[0, 5:]) - np.asarray(alone[0])).max() > 1e-2  # without ids it would leak
    with pytest.raises(ValueError, match="fresh cache"):
        cache = models.init_cache(pair.target.config, 1, 16, jnp.float32)
        models.forward(pair.target.params, pair.target.config, jnp.asarray(tokens), cache,
                       segments=jnp.asarray(segments))


def test_gsm8k_rows_become_chat_text(hf_pair):
    from adasd_jax.models import load_tokenizer

    tok = load_tokenizer(hf_pair[1])
    row = {"question": "w5 w6", "answer": "w7 <<1+1=2>>w8\n#### w9"}
    assert distill.answer_of(row) == "w7 w8\nThe answer is w9."
    ids = distill.encode_row(tok, row, chat=True)
    assert ids[:2] == [5, 6] and ids[-1] == tok.eos_token_id and 7 in ids and 8 in ids
    assert distill.encode_row(tok, {"text": "w3 w4"}, chat=True) == [3, 4, tok.eos_token_id]


@pytest.mark.parametrize("content,message", [
    (b"", "is empty"),
    (b"\n\n", "is empty"),
    (b'{"prompt": "hi"}\n', "no string `text` field and no `question`+`answer`"),
    (b'{"question": "q"}\n', "found ['question']"),
    (b'{"text": "caf\xe9"}\n', "not UTF-8"),
    (b'{"text": "ok"}\n{"text": \n', ":2 is not valid JSON"),
])
def test_bad_data_files_name_the_problem(tmp_path, capsys, hf_pair, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]").replace("+", r"\+")):
        distill.read_rows(path)
    rc = cli.main(["distill", "--target", str(hf_pair[1]), "--init", "layers:2", "--data", str(path),
                   "--out", str(tmp_path / "d")])
    assert rc == 2 and message.split("`")[0].strip() in capsys.readouterr().err
    assert not (tmp_path / "d.train").exists()  # rejected before anything was written


def test_rows_past_the_end(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "w3"}\n')
    with pytest.raises(ValueError, match="none left at offset 5"):
        distill.read_rows(path, offset=5)


def write_gsm8k_like(path, n, seed=0):
    rng = np.random.default_rng(seed)
    words = lambda k: " ".join(f"w{i}" for i in rng.integers(3, 96, k))
    path.write_text("".join(json.dumps({"question": words(8), "answer": words(12) + "\n#### w7"}) + "\n"
                            for _ in range(n)))
    return path


def test_cli_distill_saves_a_draft_that_load_pair_takes(tmp_path, capsys, hf_pair):
    target_dir = hf_pair[1]
    data = write_gsm8k_like(tmp_path / "train.jsonl", 24)
    out = tmp_path / "draft"
    argv = ["distill", "--target", str(target_dir), "--init", "layers:2", "--data", str(data), "--out", str(out),
            "--offset", "4", "--steps", "6", "--batch-size", "2", "--seq-len", "32", "--lr", "3e-3",
            "--warmup", "1", "--dtype", "float32", "--compute-dtype", "float32", "--ckpt-every", "3",
            "--continuations", "8", "--eval", "--eval-limit", "3", "--eval-max-new-tokens", "8",
            "--eval-methods", "ar,sd:K=3", "--no-progress"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    assert "| before |" in captured.out and "| after |" in captured.out
    report = json.loads((tmp_path / "draft.train" / "eval.json").read_text())
    losses = [json.loads(x)["loss"] for x in (tmp_path / "draft.train" / "log.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and np.isfinite(losses).all() and report["loss_last"] == losses[-1]
    assert 0 <= report["after"]["greedy_agreement"] <= 1
    assert set(report["after"]["methods"]) == {"ar", "sd:K=3"}

    pair = adasd_jax.load_pair(draft=str(out), target=str(target_dir), dtype="float32")
    assert pair.draft.config.num_layers == 2
    ar = adasd_jax.generate(pair, ["w5 w6 w7"], method="ar", max_new_tokens=12)
    sd = adasd_jax.generate(pair, ["w5 w6 w7"], method="sd:K=3", max_new_tokens=12)
    assert sd.tokens == ar.tokens  # a working draft: lossless SD with it equals the target alone

    # the same command again (without --eval): already finished, resumes at the end, same log and draft
    again = argv[:argv.index("--eval")] + ["--no-progress"]
    before = (tmp_path / "draft.train" / "log.jsonl").read_text()
    assert cli.main(again) == 0
    assert (tmp_path / "draft.train" / "log.jsonl").read_text() == before
    # other settings over the same state: refused with the way out
    rc = cli.main([*again, "--steps", "7"])
    assert rc == 2 and "--restart" in capsys.readouterr().err
    # eval rows overlapping training rows are refused
    rc = cli.main([*argv, "--eval-offset", "5", "--restart"])
    assert rc == 2 and "overlap the training rows" in capsys.readouterr().err


def test_init_from_another_model_checks_the_vocabulary(tmp_path, hf_pair):
    import shutil

    from conftest import make_tokenizer

    from adasd_jax import models

    tc, tp, tok = models.load(hf_pair[1], "float32")
    c, _ = distill.init_draft(str(hf_pair[0]), tc, tp, tok, "float32")
    assert c.num_layers == 2
    other = shutil.copytree(hf_pair[0], tmp_path / "other")
    make_tokenizer(vocab=80).save_pretrained(str(other))
    with pytest.raises(ValueError, match="different tokenizer"):
        distill.init_draft(str(other), tc, tp, tok, "float32")
    with pytest.raises(ValueError, match="out of range"):
        distill.init_draft("layers:9", tc, tp, tok, "float32")
    with pytest.raises(ValueError, match="layers:N with an integer"):
        distill.init_draft("layers:x", tc, tp, tok, "float32")


def test_init_layers_cuts_the_init_model(hf_pair):
    import numpy as np

    from adasd_jax import models

    tc, tp, tok = models.load(hf_pair[1], "float32")
    full_c, full_p = distill.init_draft(str(hf_pair[0]), tc, tp, tok, "float32")
    c, p = distill.init_draft(str(hf_pair[0]), tc, tp, tok, "float32", layers=1)
    assert (full_c.num_layers, c.num_layers, len(p["layers"])) == (2, 1, 1)
    for name, leaf in p["layers"][0].items():
        np.testing.assert_array_equal(leaf, full_p["layers"][0][name])
    for name in set(full_p) - {"layers"}:  # embedding, final norm, head: kept whole
        np.testing.assert_array_equal(p[name], full_p[name])
    with pytest.raises(ValueError, match="--init-layers is out of range: the model has 2 layers"):
        distill.init_draft(str(hf_pair[0]), tc, tp, tok, "float32", layers=3)
    with pytest.raises(ValueError, match="--init-layers cuts another model"):
        distill.init_draft("layers:1", tc, tp, tok, "float32", layers=1)


def test_init_layers_with_layers_init_is_refused_before_loading(tmp_path, capsys):
    data = write_gsm8k_like(tmp_path / "train.jsonl", 2)
    rc = cli.main(["distill", "--target", str(tmp_path / "no-such-target"), "--init", "layers:2",
                   "--init-layers", "1", "--data", str(data), "--out", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert rc == 2 and "--init-layers cuts another model" in err and "drop one of the two" in err
    assert not (tmp_path / "d.train").exists()  # refused before the target (absent here) was looked for
