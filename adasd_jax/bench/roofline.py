"""Roofline of the decoder on this machine: step time per forward width against measured bandwidth.

    python -m adasd_jax.bench.roofline                        # Qwen2.5-Coder-1.5B shapes, bfloat16
    python -m adasd_jax.bench.roofline --model both --dtype float32 --repeats 5 --json roofline.json

Random weights of the real shapes (nothing is downloaded). For each width T (1 = one-token decode,
more = a verification forward) it times a jitted `models.forward` of T new tokens with the cache
filled to --position (median of --repeats after a compiling warm-up; the widths take turns, one
call each per repeat, so a noisy machine's drift hits every width alike), and compares the parameter
bytes one forward reads with the memory bandwidth measured in the same run:

  param bytes = every weight once, lm_head in full, but only the B*T gathered rows of the embedding
                table (the whole table when it is tied as the head); the KV cache (read in full by
                attention) is shown apart and not counted;
  bandwidth   = bytes of W / median time of large (--bw-mib) jitted matvecs in several forms
                (`W @ x`; `x @ W` and `W @ x^T` with two rows, the form models/ uses: XLA:CPU runs
                one-row bf16 dots on an f32 copy), an f32 one, and numpy's f32 matvec and copy;
  of roof     = param bytes / step time / the best bandwidth measured (the machine's roofline);
  of xla      = the same against the best same-dtype XLA matvec (what XLA:CPU can stream).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from adasd_jax import models

TARGET = models.Config(model_type="qwen2", vocab_size=151936, hidden_size=1536, num_layers=28, num_heads=12,
                       num_kv_heads=2, head_dim=128, intermediate_size=8960, rope_theta=1e6, qkv_bias=True,
                       tie_word_embeddings=False)
DRAFT = models.Config(model_type="qwen2", vocab_size=151936, hidden_size=896, num_layers=24, num_heads=14,
                      num_kv_heads=2, head_dim=64, intermediate_size=4864, rope_theta=1e6, qkv_bias=True,
                      tie_word_embeddings=False)


def median_time(fn, repeats: int) -> float:
    """Median wall time of fn() over `repeats` runs, after one untimed (compiling) call."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bandwidth(dtype, mib: int, repeats: int) -> dict[str, float]:
    """GB/s of streaming a `mib`-MiB matrix: XLA matvecs (this dtype and f32) and numpy f32."""
    out = {}
    for dt in dict.fromkeys([jnp.dtype(dtype), jnp.dtype(jnp.float32)]):
        k = 4096
        w = jnp.full((mib * 2**20 // (k * dt.itemsize), k), 0.5, dt)
        x1, x2 = jnp.ones((k,), dt), jnp.ones((2, w.shape[0]), dt)
        f32 = jnp.float32
        gemv = jax.jit(lambda w, x: jnp.dot(w, x, preferred_element_type=f32))
        rows2 = jax.jit(lambda w, x: jnp.dot(x, w, preferred_element_type=f32))
        wx2 = jax.jit(lambda w, x: jax.lax.dot_general(w, x, (((1,), (1,)), ((), ())), preferred_element_type=f32))
        x2t = jnp.ones((2, k), dt)
        for form, fn, x in (("W@x", gemv, x1), ("x[2]@W", rows2, x2), ("W@x[2]^T", wx2, x2t)):
            out[f"xla {dt.name} {form}"] = w.nbytes / median_time(functools.partial(fn, w, x), repeats) / 1e9
        del w
    a = np.ones((mib * 2**20 // (4 * 4096), 4096), np.float32)
    v, b = np.ones(4096, np.float32), np.empty_like(a)
    out["numpy f32 W@x"] = a.nbytes / median_time(lambda: a @ v, repeats) / 1e9
    out["numpy f32 copy (read+write)"] = 2 * a.nbytes / median_time(lambda: np.copyto(b, a), repeats) / 1e9
    return out


def param_bytes(c: models.Config, params, tokens: int) -> int:
    """Bytes of parameters one forward of `tokens` gathered tokens reads (see the module docstring)."""
    total = sum(a.nbytes for a in jax.tree.leaves(params))
    if c.tie_word_embeddings:
        return total
    emb = params["embed"]
    return total - emb.nbytes + min(tokens, emb.shape[0]) * emb.shape[1] * emb.dtype.itemsize


def bench_model(name, c, dtype, args, roof, xla_roof) -> list[dict]:
    """Step time per width, the widths timed round-robin (one call each per repeat) so drift hits all alike."""
    params = models.init_params(c, jax.random.key(1), dtype)
    cache = models.init_cache(c, args.batch, args.cache_len, dtype)
    cache = cache.with_lengths(jnp.full((args.batch,), args.position, jnp.int32))
    kv_bytes = sum(a.nbytes for a in cache.k + cache.v)
    fwd = jax.jit(models.forward, static_argnums=1)
    calls, first_call_s, times = {}, {}, {w: [] for w in args.widths}
    for width in args.widths:
        tokens = jax.random.randint(jax.random.key(width), (args.batch, width), 0, c.vocab_size, jnp.int32)
        calls[width] = functools.partial(fwd, params, c, tokens, cache)
        t0 = time.perf_counter()
        jax.block_until_ready(calls[width]())
        first_call_s[width] = time.perf_counter() - t0
    for _ in range(args.repeats):
        for width in args.widths:
            t0 = time.perf_counter()
            jax.block_until_ready(calls[width]())
            times[width].append(time.perf_counter() - t0)
    rows = []
    for width in args.widths:
        step = float(np.median(times[width]))
        nbytes = param_bytes(c, params, args.batch * width)
        rows.append(dict(model=name, dtype=jnp.dtype(dtype).name, width=width, batch=args.batch, step_ms=step * 1e3,
                         x_one_token=step / float(np.median(times[args.widths[0]])),
                         tokens_per_s=args.batch * width / step, param_bytes=nbytes, kv_bytes=kv_bytes,
                         gb_per_s=nbytes / step / 1e9, of_roof=nbytes / step / 1e9 / roof,
                         of_xla=nbytes / step / 1e9 / xla_roof, first_call_s=first_call_s[width]))
        r = rows[-1]
        print(f"{name:6} {r['dtype']:8} {width:3d} {r['step_ms']:9.1f} {r['x_one_token']:6.2f} {r['tokens_per_s']:8.2f} "
              f"{nbytes / 1e9:8.3f} {kv_bytes / 1e6:7.1f} {r['gb_per_s']:7.2f} {r['of_roof']:6.3f} {r['of_xla']:6.3f}",
              flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", choices=["target", "draft", "both"], default="target")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--cache-len", type=int, default=512)
    ap.add_argument("--position", type=int, default=200, help="cache entries already filled")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--widths", type=lambda s: [int(w) for w in s.split(",")], default=[1, 2, 5, 9, 17])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bw-mib", type=int, default=1024, help="size of the bandwidth probe's matrix")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    if args.position + max(args.widths) > args.cache_len:
        ap.error("--position + the widest width must fit in --cache-len")
    dtype = jnp.dtype(args.dtype)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, {os.cpu_count()} cpus, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    bw = bandwidth(dtype, args.bw_mib, args.repeats)
    for k, v in bw.items():
        print(f"  bandwidth {k:30} {v:7.2f} GB/s")
    roof = max(bw.values())
    xla_roof = max(v for k, v in bw.items() if k.startswith(f"xla {dtype.name}"))
    print(f"roofline: {roof:.2f} GB/s (best above); best XLA {dtype.name} matvec: {xla_roof:.2f} GB/s")
    print(f"{'model':6} {'dtype':8} {'T':>3} {'step ms':>9} {'x T1':>6} {'tok/s':>8} {'param GB':>8} {'kv MB':>7} "
          f"{'GB/s':>7} {'ofroof':>6} {'of xla':>6}")
    rows = []
    for name, c in {"target": [("target", TARGET)], "draft": [("draft", DRAFT)],
                    "both": [("target", TARGET), ("draft", DRAFT)]}[args.model]:
        rows += bench_model(name, c, dtype, args, roof, xla_roof)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(args=vars(args), jax=jax.__version__, cpus=os.cpu_count(), bandwidth_gb_s=bw,
                           roofline_gb_s=roof, xla_roofline_gb_s=xla_roof, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
