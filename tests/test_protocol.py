"""Bring your own model: the decoder protocol, its cache contract, user pairs, and no `models` name collision."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import adasd_jax

REPO = Path(adasd_jax.__file__).resolve().parent.parent


def test_import_works_beside_a_research_repositorys_own_models_package(tmp_path):
    """A research repository with its own `models` package (first on sys.path, as the working directory is) keeps
    it, and adasd_jax still finds its reference decoders (as adasd_jax.models) and generates."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "__init__.py").write_text("WHOSE = 'the research repository'\n")
    (tmp_path / "models" / "config.py").write_text("raise ImportError('the research repository config')\n")
    code = """
import jax, models
import adasd_jax
from adasd_jax import engine, models as ref
assert models.WHOSE == 'the research repository', models.__file__
assert ref.__name__ == 'adasd_jax.models' and ref.Config.__module__ == 'adasd_jax.models.config'
c = ref.Config(model_type='llama', vocab_size=32, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
               head_dim=8, intermediate_size=32, max_position_embeddings=64)
pair = engine.Pair(target=engine.Model(c, ref.init_params(c, jax.random.key(0)), 't'), draft=None, tokenizer=None,
                   vocab=32)
print(len(adasd_jax.generate(pair, [[1, 2, 3]], method='ar', max_new_tokens=3).tokens[0]))
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "3"


# ---------------------------------------------------------------- a decoder of the user's: the example's NNX Llama

import dataclasses  # noqa: E402
import importlib.util  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from adasd_jax import models, protocol  # noqa: E402

MAX_NEW = 20


def _example():
    """examples/nnx_decoder.py, imported once (registered first: its dataclasses look their module up)."""
    name = "nnx_decoder_example"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "examples" / "nnx_decoder.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


@pytest.fixture(scope="module")
def nnx_pair():
    """The example's NNX Llama, tiny and random: a 4-layer target and a draft of its first 2 layers (embeddings
    dominate the residual stream, so the draft agrees with the target part of the time)."""
    from flax import nnx

    import adasd_jax.nnx

    ex = _example()
    c = ex.LlamaConfig(vocab=96, dim=64, layers=4, heads=4, kv_heads=2, head_dim=16, ffn=128, tied=False)
    target = ex.Llama(c, nnx.Rngs(0), scale=0.08, embed_scale=1.0)
    dc = dataclasses.replace(c, layers=2)
    draft = nnx.eval_shape(lambda: ex.Llama(dc, nnx.Rngs(0)))
    draft.embed, draft.lm_head, draft.final_norm = target.embed, target.lm_head, target.final_norm
    draft.blocks = nnx.List(list(target.blocks)[:2])
    t, tp = adasd_jax.nnx.decoder(target, c.init_cache, c.vocab, 1024, eos_ids=(2,))
    d, dp = adasd_jax.nnx.decoder(draft, dc.init_cache, dc.vocab, 1024, eos_ids=(2,))
    pair = adasd_jax.make_pair(t, tp, draft=d, draft_params=dp)
    return dataclasses.replace(pair, token_ranks=np.arange(96)[::-1].copy())


@pytest.fixture(scope="module")
def nnx_prompts():
    rng = np.random.default_rng(0)
    return [rng.integers(3, 96, n).tolist() for n in (5, 11, 8)]


@pytest.fixture(scope="module")
def nnx_ar(nnx_pair, nnx_prompts):
    return adasd_jax.generate(nnx_pair, nnx_prompts, method="ar", max_new_tokens=MAX_NEW)


@pytest.mark.parametrize("method", ["sd:K=3", "dynamic", "adaedl", "adasd:stop=cost,js_accept=0",
                                    "sd:K=3,draft_vocab=48"])
def test_nnx_lossless_methods_equal_ar(nnx_pair, nnx_prompts, nnx_ar, method):
    from adasd_jax import loop
    from adasd_jax.state import CostTable

    # stop=cost with cheap draft steps (measured on this tiny pair, a draft step costs about a verification)
    costs = CostTable.flat(len(loop.verify_widths(16)), draft=0.1) if "stop=cost" in method else None
    out = adasd_jax.generate(nnx_pair, nnx_prompts, method=method, max_new_tokens=MAX_NEW, costs=costs)
    assert out.tokens == nnx_ar.tokens
    assert out.metrics["lossy"].sum() == 0 and out.metrics["drafted"].sum() > 0
    if method == "sd:K=3":  # both the accepting and the rejecting paths ran
        assert 0 < out.metrics["accepted"].sum() < out.metrics["drafted"].sum()


@pytest.mark.parametrize("method", ["fsd:tau=0.3", "adasd", "adasd:per_row=1"])
def test_nnx_lossy_methods_run_and_batch_equals_each_row_alone(nnx_pair, nnx_prompts, method):
    batched = adasd_jax.generate(nnx_pair, nnx_prompts, method=method, max_new_tokens=MAX_NEW, reset_state=True)
    assert all(len(t) == MAX_NEW for t in batched.tokens) and batched.metrics["drafted"].sum() > 0
    if method.endswith("per_row=1"):
        for b, p in enumerate(nnx_prompts):
            alone = adasd_jax.generate(nnx_pair, [p], method=method, max_new_tokens=MAX_NEW, reset_state=True)
            assert alone.tokens[0] == batched.tokens[b]
            for k in ("rounds", "drafted", "accepted", "lossy"):
                assert alone.metrics[k][0] == batched.metrics[k][b], k


# ---------------------------------------------------------------- the cache contract, on both kinds of decoder

def _reference_decoder():
    c = models.Config(model_type="llama", vocab_size=96, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=16, intermediate_size=128, max_position_embeddings=256)
    return models.Decoder(c), models.init_params(c, jax.random.key(1), scale=0.1)


def _nnx_decoder():
    from flax import nnx

    import adasd_jax.nnx

    ex = _example()
    c = ex.LlamaConfig(vocab=96, dim=64, layers=2, heads=4, kv_heads=2, head_dim=16, ffn=128)
    return adasd_jax.nnx.decoder(ex.Llama(c, nnx.Rngs(1), scale=0.1), c.init_cache, c.vocab, 256)


@pytest.mark.parametrize("make", [_reference_decoder, _nnx_decoder], ids=["models", "nnx"])
def test_cache_contract(make):
    """Row b writes at its own length; attention never sees positions past a row's length; rollback is lowering
    lengths. Each is compared with the logits of a row run alone on a clean cache."""
    decoder, params = make()
    a, b = [5, 9, 14, 3, 7, 22], [40, 41, 42]

    def alone(tokens):
        logits, _ = decoder.forward(params, jnp.asarray([tokens]), decoder.init_cache(1, 16, jnp.float32))
        return np.asarray(logits[0, -1])

    # two rows of different lengths in one batch: each writes and reads at its own length
    cache = decoder.init_cache(2, 16, jnp.float32)
    prompt = jnp.asarray([a, b + [0, 0, 0]])
    logits, cache = decoder.forward(params, prompt, cache, jnp.asarray([6, 3]), jnp.asarray([5, 2]))
    np.testing.assert_allclose(np.asarray(logits[:, 0]), [alone(a), alone(b)], rtol=2e-5, atol=2e-5)
    assert np.asarray(cache.lengths).tolist() == [6, 3]  # row 1's padding was written past its length: invisible
    # stale entries past the length (a rejected draft), then rolled back: invisible and overwritten
    _, ahead = decoder.forward(params, jnp.asarray([[60, 61], [62, 63]]), cache, jnp.asarray([2, 2]))
    back = protocol.with_lengths(ahead, jnp.asarray([6, 3]))
    logits, out = decoder.forward(params, jnp.asarray([[11], [12]]), back, jnp.asarray([1, 1]))
    np.testing.assert_allclose(np.asarray(logits[:, 0]), [alone(a + [11]), alone(b + [12])], rtol=2e-5, atol=2e-5)
    assert np.asarray(out.lengths).tolist() == [7, 4]


# ---------------------------------------------------------------- errors a user of the protocol can act on

@dataclasses.dataclass(frozen=True)
class _Broken:
    """The reference decoder with one fault: bf16 logits, a dropped vocabulary row, or lengths that stay put."""

    inner: models.Decoder
    fault: str

    vocab_size = property(lambda self: self.inner.vocab_size)
    max_len = property(lambda self: self.inner.max_len)
    eos_ids = property(lambda self: self.inner.eos_ids)

    def init_cache(self, batch, max_len, dtype):
        return self.inner.init_cache(batch, max_len, dtype)

    def forward(self, params, tokens, cache, num_new=None, logits_index=None):
        logits, new = self.inner.forward(params, tokens, cache, num_new, logits_index)
        if self.fault == "dtype":
            logits = logits.astype(jnp.bfloat16)
        elif self.fault == "shape":
            logits = logits[..., :-1]
        elif self.fault == "lengths":
            new = new.with_lengths(cache.lengths)
        return logits, new


@pytest.mark.parametrize("fault, match", [("dtype", r"returned logits bfloat16\[2, 3, 96\]; the protocol wants "
                                                    r"float32\[2, 3, 96\]"),
                                          ("shape", r"returned logits float32\[2, 3, 95\]"),
                                          ("lengths", r"advance each row's cache length by num_new.*got \[0, 2\]")])
def test_a_decoder_that_breaks_the_protocol_is_refused_with_what_to_fix(fault, match):
    decoder, params = _reference_decoder()
    with pytest.raises(protocol.ProtocolError, match=match):
        adasd_jax.make_pair(_Broken(decoder, fault), params)


def test_mismatched_vocabularies_follow_the_padding_row_rule():
    decoder, params = _reference_decoder()
    c = dataclasses.replace(decoder.config, vocab_size=128)
    wide = models.Decoder(c)
    wide_params = models.init_params(c, jax.random.key(2), scale=0.1)
    with pytest.raises(ValueError, match=r"draft vocabulary \(128\) and target vocabulary \(96\) differ beyond"):
        adasd_jax.make_pair(decoder, params, draft=wide, draft_params=wide_params)
    tokenizer = type("Tok", (), {"__len__": lambda self: 90})()  # 90 real tokens: rows 90.. are padding in both
    assert adasd_jax.make_pair(decoder, params, draft=wide, draft_params=wide_params, tokenizer=tokenizer).vocab == 96
    with pytest.raises(ValueError, match="without its parameters"):
        adasd_jax.make_pair(decoder, None)


def test_compile_counts_are_those_of_the_loop_before_the_protocol(prompts):
    """Backend compilations per generate on a fresh pair, counted through jax.monitoring: after `ar` (which also
    compiles the eager set-up), each method compiles its loop program once (one backend compile, two where an eager
    helper compiles too) on its first call and nothing on its second, as before the loop went through the protocol
    (a count script gave the same numbers on both commits, 2026-12-02)."""
    from jax import monitoring

    from conftest import make_tiny_pair

    count = [0]

    def listen(event, duration, **kw):
        count[0] += event == "/jax/core/compile/backend_compile_duration"

    monitoring.register_event_duration_secs_listener(listen)
    try:
        pair = dataclasses.replace(make_tiny_pair(), token_ranks=np.arange(96)[::-1].copy())
        adasd_jax.generate(pair, prompts, method="ar", max_new_tokens=MAX_NEW)
        for method in ("sd:K=3", "adasd", "adasd:draft_vocab=32"):
            seen = []
            for _ in range(2):
                before = count[0]
                adasd_jax.generate(pair, prompts, method=method, max_new_tokens=MAX_NEW)
                seen.append(count[0] - before)
            assert 1 <= seen[0] <= 2 and seen[1] == 0, (method, seen)
    finally:
        monitoring.unregister_event_duration_listener(listen)
