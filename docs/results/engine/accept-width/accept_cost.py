"""Time one round's acceptance (loop.accept_row, vmapped over B=1) at Qwen's 152k vocabulary for each number of
verified positions, with the positions' passes over the vocabulary all at once (as up to 4795b21) and one position
at a time (XLA:CPU's default since). Before 4795b21 AdaSD paid the 17-position figure every round, whatever its
width.

    python docs/results/engine/accept-width/accept_cost.py > docs/results/engine/accept-width/accept_cost.txt
"""
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from adasd_jax import loop
from adasd_jax.divergence import Sampling
from adasd_jax.policies import Method

V, REPEATS = 151936, 30


def median_ms(method: str, temperature: float, positions: int) -> float:
    lc = loop.LoopConfig(target=None, draft=None, method=Method.parse(method), sampling=Sampling(temperature), vocab=V)
    w = positions - 1
    rng = np.random.default_rng(0)
    p = jnp.asarray(rng.normal(size=(1, positions, V)) * 3, jnp.float32)  # peaked enough to be realistic
    q = p + jnp.asarray(rng.normal(size=(1, positions, V)), jnp.float32)
    args = (p, q, jnp.zeros((1, w), jnp.int32), jnp.array([w // 2]), jnp.array([True]), jnp.zeros((1,)))
    f = jax.jit(lambda key, *a: jax.vmap(functools.partial(loop.accept_row, lc))(*a, jax.random.split(key, 1))[:3])
    jax.block_until_ready(f(jax.random.key(0), *args))
    ts = []
    for i in range(REPEATS):
        t = time.perf_counter()
        jax.block_until_ready(f(jax.random.key(i), *args))
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


print(f"jax {jax.__version__}, {jax.devices()[0]}, vocabulary {V}, median of {REPEATS}")
print("positions           method  temperature  " + "  ".join(f"{p:>5d}" for p in (2, 4, 5, 8, 16, 17)) + "   (ms)")
for sequential in (False, True):
    loop.SEQUENTIAL_POSITIONS = sequential
    for method, temp in [("sd", 0.0), ("sd", 1.0), ("adasd", 0.0), ("adasd", 1.0)]:  # sd: K = positions - 1
        cells = [median_ms(method if method != "sd" else f"sd:K={max(p - 1, 1)}", temp, p)
                 for p in (2, 4, 5, 8, 16, 17)]
        print(f"{'one at a time' if sequential else 'all at once':18s}  {method:6s}  {temp:11.1f}  "
              + "  ".join(f"{c:5.1f}" for c in cells), flush=True)
