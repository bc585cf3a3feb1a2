"""models/: logit parity with transformers, cache semantics, real weights, Orbax, bad input."""
from __future__ import annotations

import dataclasses
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from adasd_jax import models
from conftest import FAMILIES, flip_a_bit, make_hf_model

fwd = jax.jit(models.forward, static_argnums=1)


def torch_logits(directory, ids: np.ndarray) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.as_tensor(ids)).logits.float().numpy()


def prefill(params, c, ids, max_len=64):
    cache = models.init_cache(c, ids.shape[0], max_len)
    return fwd(params, c, jnp.asarray(ids), cache)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_prefill_logits_match_transformers(hf_models, family):
    c, params, _ = models.load(hf_models[family], "float32")
    ids = np.random.default_rng(0).integers(3, c.vocab_size, size=(2, 40))  # positions past rope's original context
    ours, _ = prefill(params, c, ids)
    ref = torch_logits(hf_models[family], ids)
    assert np.abs(ref).max() > 1.0  # logits are not trivially flat
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=0)


def test_bfloat16_checkpoint_loads_exactly(tmp_path):
    """A bf16 safetensors file (numpy has no bf16) reads back to the same values torch holds."""
    d = make_hf_model(tmp_path / "bf16", "qwen2", dtype="bfloat16")
    c, params, _ = models.load(d, "float32")
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.bfloat16)
    ref = m.model.layers[1].mlp.up_proj.weight.detach().float().numpy()
    np.testing.assert_array_equal(np.asarray(params["layers"][1]["w_up"]), ref)


@pytest.mark.parametrize("stored", ["float32", "bfloat16"])
def test_a_sharded_load_reads_each_shard_from_a_memory_map(tmp_path, monkeypatch, stored):
    """With shardings, a Hugging Face checkpoint stays memory-mapped: each device's slice is read from disk and cast
    alone (no host copy of the whole model per host), and the values are those of a plain load."""
    from jax.sharding import NamedSharding, PartitionSpec

    from adasd_jax.models.load import safetensors

    d = make_hf_model(tmp_path / stored, "qwen2", dtype=stored)
    read, real = [], safetensors.load
    monkeypatch.setattr(safetensors, "load", lambda *a: read.append(real(*a)[1]) or (real(*a)))
    plain = models.load(d, "float32", tokenizer=False)[1]
    one = NamedSharding(jax.make_mesh((1,), ("x",)), PartitionSpec())
    sharded = models.load(d, "float32", tokenizer=False, shardings=lambda c: jax.tree.map(
        lambda _: one, models.param_specs(c), is_leaf=lambda x: isinstance(x, models.ParamSpec)))[1]
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(sharded), strict=True):
        assert b.dtype == jnp.float32 and np.array_equal(np.asarray(a), np.asarray(b))
    assert all(type(a) is np.ndarray for a in jax.tree.leaves(read[0]))  # the plain load: in memory
    assert all(isinstance(a, np.memmap) and not a.flags.writeable for a in jax.tree.leaves(read[1]))  # mapped


def test_prefill_then_steps_equals_full_forward(hf_models):
    c, params, _ = models.load(hf_models["qwen2"], "float32")
    ids = np.random.default_rng(1).integers(3, c.vocab_size, size=(1, 24))
    full, _ = prefill(params, c, ids)
    logits, cache = prefill(params, c, ids[:, :16])
    steps = [logits]
    for t in range(16, 24):
        step, cache = fwd(params, c, jnp.asarray(ids[:, t:t + 1]), cache)
        steps.append(step)
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5, rtol=0)
    assert int(cache.lengths[0]) == 24


def test_verification_width_equals_single_steps(hf_models):
    """A T=K+1 verification forward equals K+1 one-token steps from the same cache."""
    c, params, _ = models.load(hf_models["llama"], "float32")
    ids = np.random.default_rng(2).integers(3, c.vocab_size, size=(2, 20))
    _, cache = prefill(params, c, ids[:, :15])
    wide, wide_cache = fwd(params, c, jnp.asarray(ids[:, 15:20]), cache)
    singles = []
    for t in range(15, 20):
        s, cache = fwd(params, c, jnp.asarray(ids[:, t:t + 1]), cache)
        singles.append(s)
    np.testing.assert_allclose(wide, np.concatenate(singles, 1), atol=1e-5, rtol=0)
    for a, b in zip(wide_cache.k, cache.k):
        np.testing.assert_allclose(a[:, :20], b[:, :20], atol=1e-5)  # f32 sums in another order: 1.1e-6 on AVX2


def test_ragged_batch_rows_equal_alone(hf_models):
    """Rows at different positions in one batch get the logits each gets alone."""
    c, params, _ = models.load(hf_models["qwen3"], "float32")
    rng = np.random.default_rng(3)
    lens = [7, 13, 10]
    ids = np.zeros((3, 16), np.int64)
    for b, n in enumerate(lens):
        ids[b, :n] = rng.integers(3, c.vocab_size, n)
    cache = models.init_cache(c, 3, 32)
    logits, cache = fwd(params, c, jnp.asarray(ids), cache, jnp.asarray(lens))
    assert list(np.asarray(cache.lengths)) == lens
    nxt = rng.integers(3, c.vocab_size, size=(3, 2))
    step, cache = fwd(params, c, jnp.asarray(nxt), cache)  # each row continues at its own position
    for b, n in enumerate(lens):
        alone = np.concatenate([ids[b:b + 1, :n], nxt[b:b + 1]], 1)
        ref, _ = prefill(params, c, alone, 32)
        np.testing.assert_allclose(logits[b, :n], ref[0, :n], atol=1e-5, rtol=0)
        np.testing.assert_allclose(step[b], ref[0, n:], atol=1e-5, rtol=0)


def test_rollback_is_resetting_length(hf_models):
    c, params, _ = models.load(hf_models["qwen2"], "float32")
    ids = np.random.default_rng(4).integers(3, c.vocab_size, size=(1, 12))
    _, cache = prefill(params, c, ids[:, :8])
    _, cache_after = fwd(params, c, jnp.asarray(ids[:, 8:12]), cache)  # a rejected verification
    rolled = cache_after.with_lengths(cache.lengths)
    a, _ = fwd(params, c, jnp.asarray(ids[:, 10:11]), rolled)
    b, _ = fwd(params, c, jnp.asarray(ids[:, 10:11]), cache)
    np.testing.assert_array_equal(a, b)


def test_logits_index_selects_one_position(hf_models):
    c, params, _ = models.load(hf_models["llama"], "float32")
    ids = np.random.default_rng(5).integers(3, c.vocab_size, size=(2, 10))
    full, _ = prefill(params, c, ids)
    idx = jnp.asarray([3, 9])
    one, _ = fwd(params, c, jnp.asarray(ids), models.init_cache(c, 2, 64), None, idx)
    np.testing.assert_allclose(one[:, 0], np.asarray(full)[[0, 1], [3, 9]], atol=1e-6)


def test_real_smollm2_matches_transformers(smollm2_gguf, smollm2):
    """The real 135M GGUF: same top-1 at every position of a 64-token text, |dlogit| < 1e-3."""
    from transformers import AutoModelForCausalLM

    c, params, tok = smollm2
    assert (c.model_type, c.num_layers, c.hidden_size, c.vocab_size) == ("llama", 30, 576, 49152)
    text = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
            "How many clips did Natalia sell altogether in April and May? Natalia sold 48/2 = 24 clips in May. "
            "Natalia sold 48+24 = 72 clips altogether in April and May.")
    ids = tok(text, return_tensors="np")["input_ids"][:, :64]
    assert ids.shape[1] == 64
    ours, _ = prefill(params, c, ids, 64)
    ref_model = AutoModelForCausalLM.from_pretrained(str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name,
                                                     dtype=torch.float32).eval()
    with torch.no_grad():
        ref = ref_model(torch.as_tensor(ids)).logits.numpy()
    # every config field the GGUF's metadata gives (eos, context, eps, ...) as transformers reads it
    assert c == models.config.from_hf(ref_model.config.to_dict())
    ours = np.asarray(ours)
    assert (ours.argmax(-1) == ref.argmax(-1)).all()
    assert np.abs(ours - ref).max() < 1e-3


def test_orbax_round_trip_is_bit_exact(hf_models, tmp_path):
    c, params, _ = models.load(hf_models["qwen2"], "bfloat16")
    out = models.save(tmp_path / "conv", c, params, source="test")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    c2, params2, _ = models.load(out, "bfloat16")
    assert c2 == c
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params2)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    models.save(tmp_path / "conv", c, params, overwrite=True)  # replacing an existing conversion is atomic too
    assert models.load(out, "bfloat16")[0] == c


def test_damaged_conversion_is_refused_not_loaded(hf_models, tmp_path):
    """Orbax restores a flipped bit in its data silently; the sha256 of every file, saved in the marker, catches it."""
    c, params, _ = models.load(hf_models["qwen2"], "float32")
    out = models.save(tmp_path / "conv", c, params)
    data = flip_a_bit(out)
    with pytest.raises(models.CheckpointError, match=re.escape(f"{data.relative_to(out)} fails its sha256 check")
                       + ".*adasd convert"):
        models.load(out)
    meta = json.loads((out / "adasd_model.json").read_text())
    del meta["files"]  # a conversion from before the manifest still loads (unchecked)
    (out / "adasd_model.json").write_text(json.dumps(meta))
    assert models.load(out)[0] == c


def test_sharded_checkpoint_loads_and_a_missing_shard_is_named(hf_models, tmp_path):
    """Larger Hugging Face models come as several *.safetensors files and an index naming each tensor's file."""
    from transformers import AutoModelForCausalLM

    d = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(str(hf_models["qwen2"]), dtype=torch.float32).save_pretrained(
        str(d), max_shard_size="100KB")
    shards = sorted(d.glob("*.safetensors"))
    assert len(shards) > 2 and (d / "model.safetensors.index.json").is_file()
    _, want, _ = models.load(hf_models["qwen2"])
    _, got, _ = models.load(d)
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    shards[1].unlink()
    with pytest.raises(models.CheckpointError, match=f"shards listed in model.safetensors.index.json are missing: "
                                                     f".*{shards[1].name}"):
        models.load(d)


def test_missing_and_truncated_files(hf_models, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        models.load(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="without config.json"):
        models.load(tmp_path)
    d = tmp_path / "trunc"
    d.mkdir()
    src = hf_models["llama"]
    (d / "config.json").write_text((src / "config.json").read_text())
    data = (src / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(models.CheckpointError, match="truncated|corrupt"):
        models.load(d)
    bad_gguf = tmp_path / "bad.gguf"
    bad_gguf.write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(models.CheckpointError, match="GGUF"):
        models.load(bad_gguf)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gpt2"}, "supported: llama, mistral, qwen2, qwen3"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}}, "rope_type='yarn'"),
    ({"model_type": "mistral", "sliding_window": 4096}, "sliding_window"),
    ({"mlp_bias": True}, "mlp_bias"),
])
def test_unsupported_config_is_refused(hf_models, tmp_path, change, message):
    d = tmp_path / "m"
    d.mkdir()
    cfg = json.loads((hf_models["llama"] / "config.json").read_text())
    cfg.update(change)
    (d / "config.json").write_text(json.dumps(cfg))
    os.symlink(hf_models["llama"] / "model.safetensors", d / "model.safetensors")
    with pytest.raises(models.ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        models.load(d)


def test_bad_dtype_and_prompt_longer_than_cache(hf_models):
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        models.load(hf_models["llama"], "float8")
    c, params, _ = models.load(hf_models["llama"])
    with pytest.raises(ValueError, match="longer than the cache"):
        fwd(params, c, jnp.zeros((1, 20), jnp.int32), models.init_cache(c, 1, 16))


def _dots(hlo: str) -> list[tuple[str, str]]:
    """(lhs shape, rhs shape) of every dot in an optimized HLO module."""
    shapes = dict(re.findall(r"%([\w.\-]+) = (\w+\[[\d,]*\])", hlo))
    return [(shapes.get(a, "?"), shapes.get(b, "?")) for a, b in re.findall(r" dot\(%([\w.\-]+), %([\w.\-]+)\)", hlo)]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks XLA:CPU's compiled form")
@pytest.mark.parametrize("T", [1, 4, 8, 17])
def test_bf16_weights_stream_as_the_dot_lhs(hf_models, T):
    """Every projection stays `W @ x^T` in the compiled decode/verify step (weight first): XLA folds the
    output transpose into `x @ W^T` otherwise, which streams bf16 weights ~1.5x slower on XLA:CPU."""
    c, params, _ = models.load(hf_models["llama"], "bfloat16")
    cache = models.init_cache(c, 1, 32, jnp.bfloat16)
    hlo = fwd.lower(params, c, jnp.ones((1, T), jnp.int32), cache).compile().as_text()
    weights = {f"bf16[{o},{i}]" for o, i in (np.shape(w) for w in jax.tree.leaves(params) if np.ndim(w) == 2)}
    dots = [d for d in _dots(hlo) if d[0] in weights or d[1] in weights]
    assert len(dots) >= 7 * c.num_layers, dots  # q, k, v, o, gate, up, down per layer (+ head)
    assert all(lhs in weights for lhs, _ in dots), [d for d in dots if d[0] not in weights]


def test_padded_rows():
    """One 16-bit row runs as two; on CPU 17-31 rows run as 32 and no other count changes; f32 never pads. A given
    tile (Config.row_tile) holds on every backend, 0 pads no product past one row, and a saved config leaves it out."""
    assert [models.transformer.padded_rows(m, 2) for m in (1, 2, 16)] == [2, 2, 16]
    if jax.default_backend() == "cpu":
        assert [models.transformer.padded_rows(m, 2) for m in (17, 31, 32, 33, 40)] == [32, 32, 32, 33, 40]
    assert [models.transformer.padded_rows(m, 4) for m in (1, 17, 40)] == [1, 17, 40]
    assert [models.transformer.padded_rows(m, 2, 32) for m in (17, 33, 63, 64)] == [17, 64, 64, 64]
    assert [models.transformer.padded_rows(m, 2, 0) for m in (1, 17, 31)] == [2, 17, 31]
    c = models.Config(model_type="llama", vocab_size=8, hidden_size=8, num_layers=1, num_heads=1, num_kv_heads=1,
                      head_dim=8, intermediate_size=8, row_tile=0)
    assert "row_tile" not in c.to_dict() and models.Config.from_dict(c.to_dict()).row_tile is None
    with pytest.raises(models.ConfigError, match="row_tile"):
        dataclasses.replace(c, row_tile=-1)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks XLA:CPU's compiled form")
def test_bf16_17_rows_run_as_32(hf_models):
    """A 17-row bf16 verification multiplies 32 rows and returns the same logits as 17 rows; with row_tile=0
    it multiplies 17."""
    c, params, _ = models.load(hf_models["llama"], "bfloat16")
    cache = models.init_cache(c, 1, 48, jnp.bfloat16)
    tokens = jnp.arange(3, 20, dtype=jnp.int32)[None]
    weights = {f"bf16[{o},{i}]" for o, i in (np.shape(w) for w in jax.tree.leaves(params) if np.ndim(w) == 2)}
    out = {}
    for tile in (0, 16):
        ct = dataclasses.replace(c, row_tile=tile)  # static: each tile compiles its own program
        f = jax.jit(lambda *a: models.forward(a[0], ct, *a[1:]))
        rhs = [r for lhs, r in _dots(f.lower(params, tokens, cache).compile().as_text()) if lhs in weights]
        rows = {min(map(int, re.findall(r"\d+", r.split("[")[1]))) for r in rhs}  # x's rows: its smaller dim here
        assert len(rhs) >= 7 * c.num_layers and rows == {32 if tile else 17}, rhs
        out[tile] = f(params, tokens, cache)
    assert jnp.array_equal(out[16][0], out[0][0])  # each row's product is the same whatever rows sit beside it
    assert jnp.array_equal(out[16][1].k[0], out[0][1].k[0])


def test_bf16_embedding_is_not_copied_to_f32(hf_models):
    """The token lookup reads the 16-bit table itself: no f32 copy of [vocab, hidden] in the compiled loop."""
    from adasd_jax import loop
    from adasd_jax.policies import Method

    c, params, _ = models.load(hf_models["llama"], "bfloat16")
    d = models.Decoder(c)
    lc = loop.LoopConfig(target=d, draft=d, method=Method.parse("sd:K=4"), max_new_tokens=8, vocab=c.vocab_size)
    fn = jax.jit(loop.generate, static_argnums=(2, 5))
    hlo = fn.lower(params, params, lc, jnp.ones((1, 8), jnp.int32), jnp.array([5]), 24,
                   loop.init_method_state(lc.method, 1), jax.random.key(0)).compile().as_text()
    assert f"f32[{c.vocab_size},{c.hidden_size}]" not in hlo
    assert f"bf16[{c.vocab_size},{c.hidden_size}]" in hlo
