"""The cost table's programs timed alone at batch 8 on the 8 prompts of this page: every verification width with and
without donated target caches, a draft step of 1 and of 2 tokens per row, and the prefill of both models and of the
target alone (median of `--repeats` timings taken in turns, after one warm-up call each).

    python isolated_costs.py --data-file train.jsonl
"""
import argparse
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np

import adasd_jax
from adasd_jax import engine, loop, protocol
from adasd_jax.bench import datasets

ap = argparse.ArgumentParser()
ap.add_argument("--data-file", default="train.jsonl")
ap.add_argument("--repeats", type=int, default=5)
args = ap.parse_args()
pair = adasd_jax.load_pair(dtype="bfloat16")
probs = datasets.gsm8k(args.data_file, limit=8, offset=100)
prompts, B = [p.prompt for p in probs], len(probs)
lc, ids = engine._setup(pair, prompts, "adasd:stop=cost", 128, 0.0, 0, 1.0, probs[0].chat, False, 0, B)
_, _, max_len = engine._pad(ids, lc)
pt, pd = pair.target.params, pair.draft.params


def cache(decoder, params):
    return protocol.with_lengths(decoder.init_cache(B, max_len, protocol.activation_dtype(decoder, params)),
                                 jnp.full((B,), max_len // 2, jnp.int32))


def verification(pt, n, q_buf, keys, cache):
    s = types.SimpleNamespace(done=jnp.zeros((B,), bool), last=jnp.zeros((B,), jnp.int32), target_cache=cache)
    (emitted, a, _, _), cache, _ = loop.verify(pt, lc, s, jnp.zeros((B, lc.k), jnp.int32), n, jnp.zeros((B,), bool),
                                               q_buf, jnp.zeros((B,), jnp.float32), keys)
    return (emitted, a), cache


def draft_step(pd, x, cache):
    t = jnp.full((B,), x.shape[1], jnp.int32)
    return loop.draft_forward(pd, lc, x, cache, t, t - 1)


def donating(fn, *fixed, state):
    """A call of fn(*fixed, state) -> (out, state) that donates the state and keeps the one it returns."""
    box = [state]

    def call():
        out, box[0] = fn(*fixed, box[0])
        return out
    return call


plain, donated = jax.jit(verification), jax.jit(verification, donate_argnums=4)
q_buf = jnp.zeros((B, lc.k + 1, lc.vocab), jnp.float32)
keys = jax.random.split(jax.random.key(0), B)
calls = {}
for w in lc.widths:
    n = jnp.full((B,), w, jnp.int32)
    calls[f"V({w})"] = functools.partial(plain, pt, n, q_buf, keys, cache(lc.target, pt))
    calls[f"V({w}) donated"] = donating(donated, pt, n, q_buf, keys, state=cache(lc.target, pt))
step = jax.jit(draft_step)
for t in (1, 2):
    calls[f"draft step, {t} token(s) a row"] = functools.partial(step, pd, jnp.zeros((B, t), jnp.int32),
                                                                 cache(lc.draft, pd))
times = dict(zip(calls, np.median(engine._timings(list(calls.values()), args.repeats), axis=1)))
for method in ("ar", "sd:K=1"):
    times[f"prefill ({method})"] = engine.prefill_s(pair, prompts, method, 128, 0.0, probs[0].chat, args.repeats)
for name, t in times.items():
    print(f"{name:32s} {1000 * t:9.1f} ms")
