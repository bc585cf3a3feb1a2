"""A forward of B x T tokens with the 16-bit products' rows padded (`Config.row_tile` = --tile: t < rows < 2t
run as 2t rows) against unpadded (0), timed round-robin in one process so that drift hits both alike. Random weights of the
default pair's shapes (or --weights), bfloat16, cache filled to 200 positions.

    python docs/results/engine/row-tiles/engine/row-tiles.py --model target --cases 1x1,1x16,1x17,1x24,1x32,2x9,8x5,8x17 --repeats 7
    python docs/results/engine/row-tiles/engine/row-tiles.py --model target --tile 32 --cases 1x1,1x32,1x33,1x40,1x48,1x64,8x5,8x8 --repeats 5
"""
import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import models
import models.transformer as mt
from adasd_jax.bench.roofline import DRAFT, TARGET


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["target", "draft"], default="target")
    ap.add_argument("--cases", default="1x1,1x16,1x17,1x24,1x32,8x2,8x5", help="B x T forwards")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tile", type=int, default=16, help="the padded variant's row_tile")
    ap.add_argument("--weights", help="a model directory or file to load instead of random weights of --model's shapes")
    ap.add_argument("--json")
    args = ap.parse_args()
    cases = [tuple(int(v) for v in s.split("x")) for s in args.cases.split(",")]
    if args.weights:
        c, params, _ = models.load(args.weights, "bfloat16")
    else:
        c = {"target": TARGET, "draft": DRAFT}[args.model]
        params = models.init_params(c, jax.random.key(1), jnp.bfloat16)
    calls = {}
    for B, T in cases:
        cache = models.init_cache(c, B, 512, jnp.bfloat16).with_lengths(jnp.full((B,), 200, jnp.int32))
        tokens = jax.random.randint(jax.random.key(T), (B, T), 0, c.vocab_size, jnp.int32)
        for tile in (0, args.tile):
            ct = dataclasses.replace(c, row_tile=tile)  # static, so each variant is its own jit
            f = jax.jit(lambda p, t, k, ct=ct: models.forward(p, ct, t, k))
            out = jax.block_until_ready(f(params, tokens, cache))
            calls[B, T, tile] = (f, (params, tokens, cache), out[0])
    times = {k: [] for k in calls}
    for _ in range(args.repeats):
        for k, (f, a, _) in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*a))
            times[k].append(time.perf_counter() - t0)
    one = np.median(times[cases[0] + (0,)])
    rows = []
    print(f"{args.model}: step ms (x the first case unpadded), median of {args.repeats}")
    for B, T in cases:
        a, b = (float(np.median(times[B, T, t])) for t in (0, args.tile))
        same = bool(jnp.array_equal(calls[B, T, 0][2], calls[B, T, args.tile][2]))
        rows.append(dict(batch=B, T=T, rows=B * T, padded_rows=mt.padded_rows(B * T, 2, args.tile),
                         unpadded_ms=a * 1e3, padded_ms=b * 1e3, same_logits=same))
        print(f"B={B} T={T:2d} rows {B * T:3d} -> {rows[-1]['padded_rows']:3d}: unpadded {a * 1e3:7.1f} ({a / one:4.2f})"
              f"  padded {b * 1e3:7.1f} ({b / one:4.2f})  padded/unpadded {b / a:4.2f}  same logits {same}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), jax=jax.__version__, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
