"""Fused projections (one [q;k;v] and one [gate;up] matrix per layer, as vLLM loads them) against the engine's
separate matrices: the decoder blocks' matvecs of one bf16 token, random weights of the default pair's shapes, the
two forms interleaved per repeat. Attention itself is left out; what differs is only the number and width of dots.

    python docs/results/engine/fused-projections/fused_projections.py 896 4864 128 24    # Qwen2.5-Coder-0.5B, the draft
    python docs/results/engine/fused-projections/fused_projections.py 1536 8960 256 28   # Qwen2.5-Coder-1.5B, the target

Arguments: hidden size, MLP width, k/v width (kv heads x head_dim), layers.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from adasd_jax.bench.roofline import median_time
from models.transformer import linear

D, F, KV, L = (int(a) for a in sys.argv[1:5])
ks = jax.random.split(jax.random.key(0), 7)
mk = lambda k, o, i: [jax.random.normal(kk, (o, i), jnp.bfloat16) for kk in jax.random.split(k, L)]
wq, wk, wv, wo = mk(ks[0], D, D), mk(ks[1], KV, D), mk(ks[2], KV, D), mk(ks[3], D, D)
wg, wu, wd = mk(ks[4], F, D), mk(ks[5], F, D), mk(ks[6], D, F)
wqkv = [jnp.concatenate(t, 0) for t in zip(wq, wk, wv)]
wgu = [jnp.concatenate(t, 0) for t in zip(wg, wu)]
x = jnp.ones((1, D), jnp.bfloat16)


@jax.jit
def separate(x, wq, wk, wv, wo, wg, wu, wd):
    for i in range(L):
        q, k, v = linear(x, wq[i]), linear(x, wk[i]), linear(x, wv[i])
        x = x + linear(q, wo[i]) + (k.sum() + v.sum()).astype(x.dtype)  # k, v used so that XLA keeps them
        x = x + linear(jax.nn.silu(linear(x, wg[i])) * linear(x, wu[i]), wd[i])
    return x


@jax.jit
def fused(x, wqkv, wo, wgu, wd):
    for i in range(L):
        qkv = linear(x, wqkv[i])
        q, k, v = qkv[:, :D], qkv[:, D:D + KV], qkv[:, D + KV:]
        x = x + linear(q, wo[i]) + (k.sum() + v.sum()).astype(x.dtype)
        gu = linear(x, wgu[i])
        x = x + linear(jax.nn.silu(gu[:, :F]) * gu[:, F:], wd[i])
    return x


run_separate = lambda: separate(x, wq, wk, wv, wo, wg, wu, wd).block_until_ready()
run_fused = lambda: fused(x, wqkv, wo, wgu, wd).block_until_ready()
run_separate(), run_fused()
t_sep, t_fus = [], []
for _ in range(7):  # interleaved: drift hits both alike
    t_sep.append(median_time(run_separate, 1))
    t_fus.append(median_time(run_fused, 1))
s, f = np.median(t_sep), np.median(t_fus)
print(f"D={D} F={F} KV={KV} L={L}: separate {s * 1e3:.1f} ms, fused {f * 1e3:.1f} ms, fused / separate {f / s:.3f}")
