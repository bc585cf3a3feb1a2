"""At batch 8 on the 8 prompts of this page: one round of the loop (`loop.round_step`) and its draft phase
(`loop.draft`) for `ar`, `sd:K=1` and `sd:K=3`, each timed alone as its own program (median of 5 in turns).

    python round_costs.py train.jsonl
"""
import functools, sys
import jax, jax.numpy as jnp, numpy as np
import adasd_jax
from adasd_jax import engine, loop, protocol
from adasd_jax.bench import datasets
from adasd_jax.state import CostTable, LoopState, Metrics

pair = adasd_jax.load_pair(dtype="bfloat16")
probs = datasets.gsm8k(sys.argv[1] if len(sys.argv) > 1 else "train.jsonl", limit=8, offset=100)
prompts, B = [p.prompt for p in probs], 8
pt, pdp = pair.target.params, pair.draft.params
calls = {}
for method in ("ar", "sd:K=1", "sd:K=3"):
    lc, ids = engine._setup(pair, prompts, method, 128, 0.0, 0, 1.0, True, False, 0, B)
    _, _, max_len = engine._pad(ids, lc)
    cache = lambda d, p: protocol.with_lengths(d.init_cache(B, max_len, protocol.activation_dtype(d, p)),
                                              jnp.full((B,), max_len // 2, jnp.int32))
    m = lc.method
    s = LoopState(target_cache=cache(lc.target, pt),
                  draft_cache=(cache(lc.draft, pdp) if m.uses_draft
                               else protocol.NoCache(lengths=jnp.zeros((B,), jnp.int32))),
                  last=jnp.zeros((B,), jnp.int32), pending=jnp.zeros((B, 2), jnp.int32),
                  n_pending=jnp.full((B,), 2, jnp.int32), out=jnp.zeros((B, lc.out_len), jnp.int32),
                  done=jnp.zeros((B,), bool), method=loop.init_method_state(m, B), metrics=Metrics.zeros(B),
                  key=jax.random.key(0), step=jnp.zeros((), jnp.int32), trace=None)
    costs = CostTable.flat(len(lc.widths))
    rnd = jax.jit(loop.round_step, static_argnums=2)
    calls[f"round {method}"] = functools.partial(rnd, pt, pdp, lc, s, costs)
    if m.uses_draft:
        dr = jax.jit(loop.draft, static_argnums=1)
        calls[f"draft phase {method}"] = functools.partial(dr, pdp, lc, s, jax.random.key(1), costs)
times = dict(zip(calls, np.median(engine._timings(list(calls.values()), 5), axis=1)))
for k, t in times.items():
    print(f"{k:24s} {1000 * t:8.1f} ms", flush=True)
