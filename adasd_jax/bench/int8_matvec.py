"""Every weight product of one decode step on the real layout: bf16 against the int8 kernels, interleaved.

    python -m adasd_jax.bench.int8_matvec [--layers 28] [--rows 1,2,8,16] [--repeats 7]

The target's (Qwen2.5-1.5B's) matrices, [out, in] as `models.forward` multiplies them: per layer wq, wk, wv, wo,
w_gate, w_up, w_down, then the tied head, each applied to its own input rows (one jitted call). Kernels:
  bf16        `models.transformer.linear` on bf16 weights (the default path: one row padded to two)
  w8a8        int8 weights x int8 activations (per-row dynamic scale), int32 accumulation
  w8a16       int8 weights converted to bf16 inside the product, bf16 activations
  w8a16-f32   int8 weights converted to float32, float32 activations
  w8a8-gN     w8a8 with one activation scale per N input channels of a row (int32 per group, summed in float32)
Prints per rows the median (and min) ms of each kernel and its ratio to bf16 from one interleaved run.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from adasd_jax.models import quant
from adasd_jax.models.transformer import linear

D, F, Q, KV, V = 1536, 8960, 1536, 256, 151936  # Qwen2.5-1.5B: hidden, FFN, 12x128 query, 2x128 KV, vocabulary


def shapes(layers: int, head: bool) -> list[tuple[int, int]]:
    per_layer = [(Q, D), (KV, D), (KV, D), (D, Q), (F, D), (F, D), (D, F)]
    return per_layer * layers + ([(V, D)] if head else [])


def step_fn(kernel: str):
    """One jitted pass over every matrix: each product's output is reduced so that none is dropped."""
    def run(ws, xs):
        total = jnp.zeros((), jnp.float32)
        for w, x in zip(ws, xs):
            if kernel == "bf16":
                y = linear(x, w).astype(jnp.float32)
            elif kernel.startswith("w8a8"):
                y = quant.matmul_t(w, x, "w8a8", int(kernel.partition("-g")[2] or 0))
            else:
                y = quant.matmul_t(w, x, "w8a16")
            total = total + y[0, 0]
        return total
    return jax.jit(run)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=28)
    ap.add_argument("--rows", default="1,2,8,16")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-head", action="store_true", help="leave out the 151,936-row head")
    ap.add_argument("--groups", default="128,32", type=lambda v: [int(g) for g in v.split(",") if g],
                    help="w8a8-gN: one activation scale per N input channels of a row (comma list)")
    ap.add_argument("--kernels", default="", help="comma list of the kernels to run (default: all; bf16 first)")
    a = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    dims = shapes(a.layers, not a.no_head)
    w32 = [rng.standard_normal((o, i), np.float32) * 0.02 for o, i in dims]
    wb = [jnp.asarray(w, jnp.bfloat16) for w in w32]
    wq = [jax.tree.map(jnp.asarray, quant.quantize_np(w)) for w in w32]
    del w32
    gb_bf16 = sum(w.nbytes for w in wb) / 1e9
    gb_int8 = sum(w.nbytes for w in wq) / 1e9
    kernels = {"bf16": (wb, jnp.bfloat16), "w8a8": (wq, jnp.bfloat16), "w8a16": (wq, jnp.bfloat16),
               "w8a16-f32": (wq, jnp.float32), **{f"w8a8-g{g}": (wq, jnp.bfloat16) for g in a.groups}}
    kernels = {k: v for k, v in kernels.items() if not a.kernels or k in a.kernels.split(",")}
    print(f"{jax.devices()[0].device_kind} ({jax.default_backend()}), {a.layers} layers"
          f"{'' if a.no_head else ' + head'}: bf16 {gb_bf16:.2f} GB, int8 {gb_int8:.2f} GB")
    fns = {k: step_fn(k) for k in kernels}
    for m in map(int, a.rows.split(",")):
        xs = {k: [jnp.asarray(rng.standard_normal((m, i)), dt) for _, i in dims] for k, (_, dt) in kernels.items()}
        for k, (ws, _) in kernels.items():
            jax.block_until_ready(fns[k](ws, xs[k]))  # compile
        times = {k: [] for k in kernels}
        for _ in range(a.repeats):
            for k, (ws, _) in kernels.items():
                t = time.perf_counter()
                jax.block_until_ready(fns[k](ws, xs[k]))
                times[k].append(time.perf_counter() - t)
        med = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
        row = "  ".join(f"{k} {med[k]:7.1f} ms (min {min(times[k]) * 1e3:6.1f}, {med['bf16'] / med[k]:4.2f}x)"
                        for k in kernels)
        print(f"rows {m:3d}: {row}", flush=True)


if __name__ == "__main__":
    main()
