"""Accelerator check: parity/losslessness tests on the device, step times, roofline, projected tokens/s.

    python -m adasd_jax.bench.device_check                 # on a CUDA (or TPU) machine, under 5 minutes
    python -m adasd_jax.bench.device_check --skip-tests --json check.json

1. Runs the test suite's parity and losslessness tests with JAX on the accelerator (float32 with
   `highest` matmul precision: TF32 would make float32 equality a bfloat16-like statement).
2. Times, on random weights of the default pair's shapes in bfloat16 (nothing to download), one
   draft decode step and one target forward at each verification width, and compares the bytes
   each reads with the memory bandwidth measured in the same run (a device-to-device copy) and
   with the chip's datasheet HBM bandwidth.
3. Runs the jitted loop itself on those random weights (`ar`, `sd:K=4`) to measure its overhead
   over the bare steps.
4. Random weights make acceptance meaningless, so projected tokens/s per method combine these step
   times with the per-problem rounds and drafted tokens measured on the CPU with the real weights
   (`docs/results/engine_greedy_bf16.json`):
       time = sum over problems of rounds * t_target(w + 1) + (drafted + rounds) * t_draft
   with w the smallest static verification width >= the problem's mean proposals per round.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CPU_RESULTS = ROOT / "docs" / "results" / "engine_greedy_bf16.json"
DATASHEET_GB_S = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "L4": 300.0, "TPU v5 lite": 819.0, "TPU v4": 1200.0}
# tests whose verdicts are the device-independent contract: logit parity, cache parity, losslessness
DEVICE_TESTS = ["tests/test_models.py", "tests/test_engine.py", "tests/test_divergence.py", "tests/test_thresholds.py"]
DEVICE_TEST_FILTER = ("(prefill_logits and not qwen3 and not llama3 and not mistral) or steps_equals or width_equals or ragged "
                      "or rollback or lossless or thresholds_off or batch_equals")


def run_tests(platform: str, timeout: int) -> dict:
    env = dict(
        os.environ,
        JAX_PLATFORMS=platform,
        XLA_PYTHON_CLIENT_PREALLOCATE="false",
        JAX_DEFAULT_MATMUL_PRECISION="highest",
        XLA_FLAGS="",
    )
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", *DEVICE_TESTS, "-k", DEVICE_TEST_FILTER]
    print(f"$ JAX_PLATFORMS={platform} JAX_DEFAULT_MATMUL_PRECISION=highest {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    try:
        rc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, timeout=timeout).returncode  # streams its output
    except subprocess.TimeoutExpired:
        print(f"tests timed out after {timeout}s", flush=True)
        rc = 124
    return {"returncode": rc, "seconds": time.perf_counter() - t}


def datasheet(kind: str) -> float | None:
    return next((v for k, v in DATASHEET_GB_S.items() if k.lower() in kind.lower()), None)


def copy_bandwidth(jax, jnp, gib: float = 2.0) -> float:
    """GB/s of a device-to-device elementwise pass (bytes read + written)."""
    from adasd_jax.bench.roofline import median_time

    x = jnp.ones((int(gib * 2**30) // 2,), jnp.bfloat16)
    f = jax.jit(lambda x: x + 1)
    return 2 * x.nbytes / median_time(lambda: f(x), 10) / 1e9


def step_times(jax, jnp, models, c, widths, position, cache_len, repeats, chain: int = 32) -> dict[int, dict]:
    """Per-forward time of `chain` forwards chained in one jitted fori_loop (launch overhead amortised,
    as inside the decode loop), and of one forward called from Python (`call_ms`)."""
    from adasd_jax.bench.roofline import median_time, param_bytes

    params = models.init_params(c, jax.random.key(1), jnp.bfloat16)
    cache = models.init_cache(c, 1, cache_len, jnp.bfloat16).with_lengths(jnp.asarray([position], jnp.int32))
    kv = sum(a.nbytes for a in cache.k + cache.v)
    fwd = jax.jit(models.forward, static_argnums=1)

    @jax.jit
    def chained(params, tokens, cache):
        def body(_, acc):  # each forward's tokens depend on the last one's logits: nothing can be hoisted
            logits, _ = models.forward(params, c, tokens + (acc > 1e30).astype(jnp.int32), cache)
            return acc + logits[0, -1, 0].astype(jnp.float32)

        return jax.lax.fori_loop(0, chain, body, jnp.float32(0))

    out = {}
    for t in widths:
        tokens = jnp.ones((1, t), jnp.int32)
        call = median_time(lambda tokens=tokens: fwd(params, c, tokens, cache), repeats)
        s = median_time(lambda tokens=tokens: chained(params, tokens, cache), max(3, repeats // 4)) / chain
        out[t] = {"step_ms": s * 1e3, "call_ms": call * 1e3, "param_bytes": param_bytes(c, params, t), "kv_bytes": kv}
    return out


def loop_times(jax, jnp, models, engine, tc, dc, new_tokens: int) -> dict[str, dict]:
    """The jitted loop on random weights: ms per round and per token (no EOS: random text runs to the end)."""
    import dataclasses

    tc, dc = (dataclasses.replace(c, eos_token_ids=()) for c in (tc, dc))
    tp = models.init_params(tc, jax.random.key(1), jnp.bfloat16)
    dp = models.init_params(dc, jax.random.key(2), jnp.bfloat16)
    pair = engine.Pair(
        target=engine.Model(tc, tp, "random"), draft=engine.Model(dc, dp, "random"), tokenizer=None, vocab=tc.vocab_size
    )
    prompt = list(range(100, 164))
    out = {}
    for method in ("ar", "sd:K=4"):
        first = engine.generate(pair, [prompt], method=method, max_new_tokens=new_tokens)  # compiles
        runs = [engine.generate(pair, [prompt], method=method, max_new_tokens=new_tokens) for _ in range(3)]
        o = min(runs, key=lambda o: o.run_s)
        rounds = int(o.metrics["rounds"][0]) + 1
        out[method] = {
            "tokens_per_s": o.tokens_per_s,
            "ms_per_round": o.run_s / rounds * 1e3,
            "rounds": rounds,
            "new_tokens": int(o.metrics["new_tokens"][0]),
            "compile_s": first.compile_s,
        }
    return out


def project(records: dict, t_target: dict[int, float], t_draft: float, widths) -> dict[str, dict]:
    """Projected tokens/s per method from CPU-measured rounds/drafted counts and device step times."""
    out = {}
    for method, rs in records.items():
        total_t, total_tok = 0.0, 0
        for r in rs:
            rounds = r["rounds"] + 1
            if method == "ar":
                total_t += rounds * t_target[1]
            else:
                mean = r["drafted"] / rounds
                w = next((w for w in widths if w >= mean), widths[-1])
                total_t += rounds * t_target[w + 1] + (r["drafted"] + rounds) * t_draft
            total_tok += r["new_tokens"]
        out[method] = {
            "tokens_per_s": total_tok / total_t,
            "tokens_per_call": total_tok / sum(r["rounds"] + 1 for r in rs),
        }
    ar = out.get("ar", {}).get("tokens_per_s")
    for v in out.values():
        v["speedup_vs_ar"] = v["tokens_per_s"] / ar if ar else None
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--test-timeout", type=int, default=240)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--position", type=int, default=256)
    ap.add_argument("--cache-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--json", help="write all figures here")
    a = ap.parse_args(argv)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the test subprocess needs the device too

    import jax
    import jax.numpy as jnp

    import models
    from adasd_jax import engine
    from adasd_jax.bench.roofline import DRAFT, TARGET
    from adasd_jax.loop import verify_widths

    dev = jax.devices()[0]
    report = {"device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__}
    print(f"jax {jax.__version__} on {dev.platform}: {dev.device_kind}", flush=True)
    bw = copy_bandwidth(jax, jnp)
    sheet = datasheet(dev.device_kind)
    report.update(copy_gb_s=bw, datasheet_gb_s=sheet)
    print(f"\nbandwidth: copy {bw:.0f} GB/s (read+write); datasheet {sheet or '?'} GB/s")
    widths = list(verify_widths(16))
    t = step_times(jax, jnp, models, TARGET, [w + 1 for w in widths], a.position, a.cache_len, a.repeats)
    d = step_times(jax, jnp, models, DRAFT, [1, 2], a.position, a.cache_len, a.repeats)
    print(
        f"{'model':6} {'T':>3} {'ms':>8} {'tok/s':>8} {'GB/s params':>11} {'of copy':>7} {'of sheet':>8} "
        f"{'GB/s +kv':>8}"
    )
    for name, rows in (("target", t), ("draft", d)):
        for width, r in rows.items():
            gbs = r["param_bytes"] / r["step_ms"] * 1e-6
            r.update(
                gb_s=gbs,
                of_copy=gbs / bw,
                of_datasheet=gbs / sheet if sheet else None,
                gb_s_with_kv=(r["param_bytes"] + r["kv_bytes"]) / r["step_ms"] * 1e-6,
            )
            print(
                f"{name:6} {width:3d} {r['step_ms']:8.3f} {width / r['step_ms'] * 1e3:8.1f} {gbs:11.0f} "
                f"{r['of_copy']:7.3f} {r['of_datasheet'] or float('nan'):8.3f} {r['gb_s_with_kv']:8.0f}"
            )
    report.update(target_steps=t, draft_steps=d)

    loops = loop_times(jax, jnp, models, engine, TARGET, DRAFT, a.new_tokens)
    ar_limit = 1e3 / t[1]["step_ms"]
    for m, r in loops.items():
        print(
            f"loop {m:7}: {r['tokens_per_s']:8.1f} tok/s, {r['ms_per_round']:.3f} ms/round over {r['rounds']} rounds "
            f"(compile {r['compile_s']:.1f}s)"
        )
    print(f"ar loop reaches {loops['ar']['tokens_per_s'] / ar_limit:.3f} of 1/step ({ar_limit:.1f} tok/s)")
    report.update(loops=loops, ar_vs_step_limit=loops["ar"]["tokens_per_s"] / ar_limit)

    if CPU_RESULTS.is_file():
        records = json.loads(CPU_RESULTS.read_text())["records"]
        proj = project(records, {w: r["step_ms"] / 1e3 for w, r in t.items()}, d[1]["step_ms"] / 1e3, widths)
        print(
            f"\nprojected on {dev.device_kind} (step times here x rounds/drafted measured on the CPU with real "
            f"weights, {CPU_RESULTS.relative_to(ROOT)}):"
        )
        for m, r in proj.items():
            print(
                f"  {m:28} {r['tokens_per_s']:8.1f} tok/s  {r['speedup_vs_ar']:.2f}x ar  "
                f"{r['tokens_per_call']:.2f} tokens/call"
            )
        report["projected"] = proj
    if not a.skip_tests:  # last: the timings above need the device alone
        report["tests"] = run_tests("cuda" if dev.platform == "gpu" else dev.platform, a.test_timeout)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1, default=str))
    return 0 if report.get("tests", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
