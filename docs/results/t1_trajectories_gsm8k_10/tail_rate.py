import jax, jax.numpy as jnp, numpy as np
from adasd_jax.divergence import sample
V = 151936
rng = np.random.default_rng(0)
for top_at, top in [(5, 17.0), (151900, 17.0), (70000, 12.0)]:
    x = rng.standard_normal(V).astype(np.float32); x[top_at] = top
    p = np.exp(x - x.max()); p /= p.sum()
    f = jax.jit(jax.vmap(lambda k: sample(k, jnp.asarray(x))))
    n, hits, old = 0, 0, 0
    g = jax.jit(jax.vmap(lambda k: jax.random.categorical(k, jnp.asarray(x))))
    for c in range(20):
        keys = jax.random.split(jax.random.key(c), 1000)
        s = np.asarray(f(keys)); hits += (s == top_at).sum(); n += s.size
        old += (np.asarray(g(keys)) == top_at).sum()
    print(f"top at {top_at}: p_top {p[top_at]:.5f}  new sampler {hits/n:.5f}  categorical {old/n:.5f}  (n={n}, sd {np.sqrt(p[top_at]*(1-p[top_at])/n):.5f})", flush=True)
