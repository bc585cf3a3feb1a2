"""XLA's bf16 product in the engine's form (`models.linear`, `W @ x^T`) against torch's bf16 `linear`, at the
default pair's matrix shapes, one row, in one process with the two interleaved per repeat.

    python docs/results/peers/bf16-matvec/bf16_matvec.py [--repeats 7]

Each timing multiplies several distinct matrices of one shape (about 300 MB, past the caches) in one call; GB/s
counts the weights' bytes. The numpy float32 matvec of the same bytes is printed as the machine's memory roofline.
"""
from __future__ import annotations

import argparse
import os

import jax
import jax.numpy as jnp
import numpy as np
import torch

from adasd_jax.bench.roofline import median_time
from models.transformer import linear

SHAPES = {"target": [(1536, 1536), (256, 1536), (8960, 1536), (1536, 8960), (151936, 1536)],
          "draft": [(896, 896), (128, 896), (4864, 896), (896, 4864), (151936, 896)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"jax {jax.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")
    n_f32 = 300_000_000 // 4
    w32 = np.random.default_rng(0).standard_normal((n_f32 // 4096, 4096), dtype=np.float32)
    v32 = np.ones(4096, np.float32)
    roof = w32.nbytes / median_time(lambda: w32 @ v32, a.repeats) / 1e9
    print(f"numpy f32 matvec (roofline): {roof:.1f} GB/s\n")
    print(f"{'model':6} {'W [out, in]':>16} {'mats':>4} {'XLA GB/s':>9} {'torch GB/s':>10} {'XLA/torch':>9}")
    for model, shapes in SHAPES.items():
        for out, inn in shapes:
            n = max(1, 300_000_000 // (out * inn * 2))
            ws = [jax.random.normal(jax.random.key(i), (out, inn), jnp.bfloat16) for i in range(n)]
            x = jnp.ones((1, inn), jnp.bfloat16)
            f = jax.jit(lambda ws, x: [linear(x, w) for w in ws])
            tw = [torch.from_numpy(np.array(w.astype(jnp.float32))).to(torch.bfloat16) for w in ws]
            tx = torch.ones(1, inn, dtype=torch.bfloat16)
            nbytes = n * out * inn * 2
            t_xla, t_torch = [], []
            for _ in range(a.repeats):  # interleaved: drift hits both alike
                t_xla.append(median_time(lambda: f(ws, x), 1))
                t_torch.append(median_time(lambda: [torch.nn.functional.linear(tx, w) for w in tw], 1))
            gx, gt = nbytes / np.median(t_xla) / 1e9, nbytes / np.median(t_torch) / 1e9
            print(f"{model:6} {str([out, inn]):>16} {n:4d} {gx:9.1f} {gt:10.1f} {gx / gt:9.2f}", flush=True)


if __name__ == "__main__":
    main()
