"""Accelerator check: parity/losslessness tests on the device, step times, roofline, projected tokens/s.

    python -m adasd_jax.bench.device_check                 # on a CUDA (or TPU) machine
    python -m adasd_jax.bench.device_check --skip-tests --json check.json
    XLA_FLAGS=... python -m adasd_jax.bench.device_check --steps-only   # one-row steps under other flags
    python -m adasd_jax.bench.device_check --steps-from check.json --records R.json  # replay saved step times

The aim is 5 minutes. On one H200 it once ran past 400 s with 6 of its 22 tests unfinished: compiling the many
small test programs dominates the tests. So the tests run without GPU GEMM autotuning, over half the host's cores
(at most 8 xdist workers). On 2026-11-28 an H200 took 296 s (timings 153 s, of which 91 s compiling and timing 11
step programs one after another; 23 tests 139 s, with the two 70 s tests started last), then 304 s on a slower
machine with each worker started on one of the slowest tests (`device_test_order`; tests 130 s). Every timed
program (the 11 step programs and the loop check's two, 42 s of which was `sd:K=4` alone) now compiles at once,
in threads, before anything is timed; no GPU has timed that yet. The tests get what the timings leave of
`--budget` (300 s), at least the 150 s they took on the H200, so the check ends by max(300 s, timings + 150 s)
and says how long it took.

1. Last, once the device is free of the timings: runs the test suite's parity and losslessness tests with JAX on
   the accelerator (float32 with `highest` matmul precision: TF32 would make float32 equality a bfloat16-like
   statement), over pytest-xdist workers where it is installed.
2. Times, on random weights of the default pair's shapes in bfloat16 (nothing to download), one
   draft decode step and one target forward at each verification width, and compares the bytes
   each reads with the memory bandwidth measured in the same run (a device-to-device copy) and
   with the chip's datasheet HBM bandwidth.
3. Runs the jitted loop itself on those random weights (`ar`, `sd:K=4`) to measure its overhead
   over the bare steps. Every program of steps 2 and 3 is compiled first, all at once.
4. Random weights make acceptance meaningless, so projected tokens/s per method replay, round by round, the
   traces that `adasd bench` recorded on the CPU with the real weights (`--records`, default: the greedy and
   temperature-1 GSM8K 0-9 runs of 2026-11-28, shipped in `adasd_jax/bench/traces/`) with the step times measured here. A round of n proposals costs
       t_target(rows) + t_draft(first) + (steps - 1) * t_draft(1)
   rows = the smallest static verification width >= n, plus one; steps = n draft forwards, plus the declined
   token's forward when the entropy rule stopped the round and the token was left unproposed (spec AdaSD);
   the first forward feeds two tokens after a round whose last proposal was accepted and never fed.
   The decode phase only: the prefill and its token are left out, so `ar` projects to 1 / t_target(1).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from adasd_jax.loop import verify_widths
from adasd_jax.policies import Method

ROOT = Path(__file__).resolve().parents[2]
CPU_RECORDS = [Path(__file__).resolve().parent / "traces" / f"gsm8k-0-9-{t}.json" for t in ("greedy", "t1")]
DATASHEET_GB_S = {"H100": 3350.0, "H200": 4800.0, "A100": 2039.0, "L4": 300.0, "TPU v5 lite": 819.0, "TPU v4": 1200.0}
# tests whose verdicts are the device-independent contract: logit parity, cache parity, losslessness
DEVICE_TESTS = ["tests/test_models.py", "tests/test_engine.py", "tests/test_divergence.py", "tests/test_thresholds.py"]
DEVICE_TEST_FILTER = ("(prefill_logits and not qwen3 and not llama3 and not mistral) or steps_equals or width_equals "
                      "or ragged or rollback or lossless or thresholds_off or batch_equals")


def run_tests(platform: str, timeout: int, workers: int) -> dict:
    env = dict(
        os.environ,
        JAX_PLATFORMS=platform,
        XLA_PYTHON_CLIENT_PREALLOCATE="false",
        JAX_DEFAULT_MATMUL_PRECISION="highest",
        XLA_FLAGS=xla_flags_for_tests(platform),
    )
    cmd = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "--durations=8", *DEVICE_TESTS,
           "-k", DEVICE_TEST_FILTER]
    if workers > 1:  # compilation, not the device, bounds these small tests: spread it over the host's cores
        # xdist's load scheduling hands each worker two consecutive tests, then one at a time: the order below
        # makes the first of each pair one of the slowest
        cmd += ["-n", str(workers), "--dist", "load", "-p", "adasd_jax.bench.device_test_order"]
    print(f"$ JAX_PLATFORMS={platform} JAX_DEFAULT_MATMUL_PRECISION=highest XLA_FLAGS='{env['XLA_FLAGS']}' "
          f"python {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    try:
        rc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, timeout=timeout).returncode  # streams its output
    except subprocess.TimeoutExpired:
        print(f"tests timed out after {timeout}s", flush=True)
        rc = 124
    return {"returncode": rc, "seconds": time.perf_counter() - t}


def xla_flags_for_tests(platform: str) -> str:
    """No GEMM autotuning on a GPU: for these tiny float32 programs it only adds compile time, which bounds the tests.
    XLA aborts on a flag it does not know, so the flag is first tried in a throwaway process."""
    flags = "--xla_gpu_autotune_level=0" if platform == "cuda" else ""
    if flags:
        probe = subprocess.run([sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
                               env=dict(os.environ, JAX_PLATFORMS=platform, XLA_FLAGS=flags), capture_output=True,
                               check=False)
        if probe.returncode:
            why = probe.stderr.decode()[-200:].strip()
            print(f"XLA_FLAGS={flags} refused by this jax ({why}): tests run without it")
            return ""
    return flags


def default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def datasheet(kind: str) -> float | None:
    return next((v for k, v in DATASHEET_GB_S.items() if k.lower() in kind.lower()), None)


def copy_bandwidth(jax, jnp, gib: float = 2.0) -> float:
    """GB/s of a device-to-device elementwise pass (bytes read + written)."""
    from adasd_jax.bench.roofline import median_time

    x = jnp.ones((int(gib * 2**30) // 2,), jnp.bfloat16)
    f = jax.jit(lambda x: x + 1)
    return 2 * x.nbytes / median_time(lambda: f(x), 10) / 1e9


def step_programs(jax, jnp, models, c, widths, position, cache_len, chain: int = 32) -> dict:
    """Random bfloat16 weights of c's shapes, a cache filled to `position`, and a build thunk per program: `chain`
    forwards chained in one jitted fori_loop per width (launch overhead amortised, as inside the decode loop), and
    one forward of the first width called from Python ("call", dispatch included)."""
    params = models.init_params(c, jax.random.key(1), jnp.bfloat16)
    cache = models.init_cache(c, 1, cache_len, jnp.bfloat16).with_lengths(jnp.asarray([position], jnp.int32))
    fwd = jax.jit(models.forward, static_argnums=1)

    @jax.jit
    def chained(params, tokens, cache):
        def body(_, acc):  # each forward's tokens depend on the last one's logits: nothing can be hoisted
            logits, _ = models.forward(params, c, tokens + (acc > 1e30).astype(jnp.int32), cache)
            return acc + logits[0, -1, 0].astype(jnp.float32)

        return jax.lax.fori_loop(0, chain, body, jnp.float32(0))

    tokens = {t: jnp.ones((1, t), jnp.int32) for t in widths}
    build = {t: (lambda t=t: chained.lower(params, tokens[t], cache).compile()) for t in widths}
    build["call"] = lambda: fwd.lower(params, c, tokens[widths[0]], cache).compile()
    return {"params": params, "cache": cache, "tokens": tokens, "build": build, "chain": chain,
            "kv_bytes": sum(a.nbytes for a in cache.k + cache.v)}


def compile_all(builds: dict) -> tuple[dict, float]:
    """Every build thunk at once, in threads: compiling dominates the check, and XLA compiles outside the GIL.
    Returns (what each built, wall seconds)."""
    t = time.perf_counter()
    with ThreadPoolExecutor(max(1, len(builds))) as pool:
        built = dict(zip(builds, pool.map(lambda f: f(), builds.values())))
    return built, time.perf_counter() - t


def time_steps(c, prog: dict, built: dict, repeats: int) -> dict[int, dict]:
    """Per-forward ms of each compiled width, one width after another on the otherwise idle device."""
    from adasd_jax.bench.roofline import median_time, param_bytes

    params, cache, tokens, chain = prog["params"], prog["cache"], prog["tokens"], prog["chain"]
    out = {}
    for t in tokens:
        s = median_time(lambda t=t: built[t](params, tokens[t], cache), max(3, repeats // 4)) / chain
        out[t] = {"step_ms": s * 1e3, "param_bytes": param_bytes(c, params, t), "kv_bytes": prog["kv_bytes"]}
    first = next(iter(tokens))
    out[first]["call_ms"] = median_time(lambda: built["call"](params, tokens[first], cache), repeats) * 1e3
    return out


LOOP_METHODS = ("ar", "sd:K=4")
LOOP_PROMPT = list(range(100, 164))


def loop_pair(engine, tc, dc, tp, dp):
    """The jitted loop's pair on the step programs' random weights, without EOS (random text runs to the end)."""
    import dataclasses

    tc, dc = (dataclasses.replace(c, eos_token_ids=()) for c in (tc, dc))
    return engine.Pair(target=engine.Model(tc, tp, "random"), draft=engine.Model(dc, dp, "random"), tokenizer=None,
                       vocab=tc.vocab_size)


def loop_times(engine, pair, new_tokens: int, compile_s: dict[str, float]) -> dict[str, dict]:
    """The loop programs (compiled by `engine.precompile`): ms per round and per token, best of 3 after a warm-up."""
    out = {}
    for method in LOOP_METHODS:
        engine.generate(pair, [LOOP_PROMPT], method=method, max_new_tokens=new_tokens)
        runs = [engine.generate(pair, [LOOP_PROMPT], method=method, max_new_tokens=new_tokens) for _ in range(3)]
        o = min(runs, key=lambda o: o.run_s)
        rounds = int(o.metrics["rounds"][0]) + 1
        out[method] = {
            "tokens_per_s": o.tokens_per_s,
            "ms_per_round": o.run_s / rounds * 1e3,
            "rounds": rounds,
            "new_tokens": int(o.metrics["new_tokens"][0]),
            "compile_s": compile_s[method],
        }
    return out


def round_seconds(method: Method, draft_len: list[int], accepted: list[int], t_target: dict[int, float],
                  t_draft: dict[int, float]) -> float:
    """Device time of one problem's recorded rounds (see the module docstring)."""
    widths, total, fed_last = verify_widths(method.cap), 0.0, True
    for n, a in zip(draft_len, accepted):
        unproposed = method.name in ("adasd", "adaedl") and not method.propose_declined and n < method.cap
        steps = max(n + unproposed, 1)
        rows = min(w for w in widths if w >= n) + 1
        total += t_target[rows] + t_draft[1 if fed_last else 2] + (steps - 1) * t_draft[1]
        fed_last = not (n and a == n and not unproposed)  # an accepted, never-fed last proposal is fed next round
    return total


def project(records: dict, t_target: dict[int, float], t_draft: dict[int, float]) -> dict[str, dict]:
    """Projected decode tokens/s per method: device step times x the rounds recorded on the CPU."""
    out = {"ar": {"tokens_per_s": 1 / t_target[1], "tokens_per_call": 1.0}}
    for name, rs in records.items():
        try:
            m = Method.parse(name)
        except ValueError:  # a peer (hf-ar, hf-assisted): not this engine's rounds
            continue
        if m.name == "ar" or any(not r.get("trace") for r in rs):
            continue
        seconds = sum(round_seconds(m, r["trace"]["draft_len"], r["trace"]["accepted"], t_target, t_draft) for r in rs)
        tokens = sum(r["new_tokens"] - 1 for r in rs)
        out[name] = {"tokens_per_s": tokens / seconds, "tokens_per_call": tokens / sum(r["rounds"] for r in rs)}
    for v in out.values():
        v["speedup_vs_ar"] = v["tokens_per_s"] * t_target[1]
    return out


def verify_rows(caps) -> list[int]:
    """Target forward rows that verifications with these draft caps run (widths + 1), and 1 for `ar`."""
    return sorted({1} | {w + 1 for c in caps for w in verify_widths(c)})


def load_runs(paths: list[Path]) -> dict[str, dict]:
    """The batch-1 `adasd bench` results among `paths`, by display name; the others are reported and skipped."""
    runs = {}
    for path in paths:
        name = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
        if not path.is_file():
            print(f"no projection from {name}: file not found")
            continue
        data = json.loads(path.read_text())
        if data.get("config", {}).get("batch_size", 1) != 1:
            print(f"no projection from {name}: its rounds were run at batch {data['config']['batch_size']}, "
                  "the step times here are batch 1")
            continue
        runs[name] = data
    return runs


def recorded_caps(runs: dict[str, dict]) -> set[int]:
    """Draft caps of the engine methods in these runs (peers and `ar` have none)."""
    caps = set()
    for data in runs.values():
        for name in data["records"]:
            try:
                caps.add(Method.parse(name).cap)
            except ValueError:  # a peer
                continue
    return caps - {0}


def print_projections(runs: dict[str, dict], t: dict, d: dict, where: str, steps_from: str) -> dict[str, dict]:
    """Project and print every run's methods from step times `t` (target, by rows) and `d` (draft) in ms."""
    t_s = {int(w): r["step_ms"] / 1e3 for w, r in t.items()}
    d_s = {int(w): r["step_ms"] / 1e3 for w, r in d.items()}
    out = {}
    for name, data in runs.items():
        proj = project(data["records"], t_s, d_s)
        temp = data.get("config", {}).get("temperature", 0.0)
        print(f"\nprojected decode {where}, temperature {temp} (step times {steps_from} x rounds recorded on "
              f"the CPU with real weights, {name}):")
        for m, r in proj.items():
            print(f"  {m:36} {r['tokens_per_s']:8.1f} tok/s  {r['speedup_vs_ar']:.2f}x ar  "
                  f"{r['tokens_per_call']:.2f} tokens/call")
        out[name] = proj
    return out


def project_saved(steps_json: Path, records: list[Path]) -> dict[str, dict]:
    """Replay the step times of an earlier check's JSON over `records`, with no device."""
    saved = json.loads(steps_json.read_text())
    runs = load_runs(records)
    missing = sorted(set(verify_rows(recorded_caps(runs))) - {int(w) for w in saved["target_steps"]})
    if missing:
        raise SystemExit(f"{steps_json} has no target step time for {missing} rows, which these records' methods "
                         "verify: run the check on the device with these --records")
    return print_projections(runs, saved["target_steps"], saved["draft_steps"], f"on {saved['device']}",
                             f"from {steps_json}")


STARTED = time.perf_counter()  # at import, before JAX's: the whole check's clock
MIN_TEST_S = 150  # the test phases took 130-138 s on an H200 (2026-11-28)


def time_for_tests(budget: float, elapsed: float, explicit: int | None) -> int:
    """The tests' time: --test-timeout if given, else what the timings left of the budget (10 s kept for the
    test process to start and stop), never under MIN_TEST_S."""
    return explicit if explicit is not None else max(MIN_TEST_S, int(budget - elapsed - 10))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--budget", type=float, default=300.0,
                    help="seconds for the whole check: the tests get what the timings leave (at least 150)")
    ap.add_argument("--test-timeout", type=int, default=None, help="seconds for the tests (default: from --budget)")
    ap.add_argument("--test-workers", type=int, default=default_workers(),
                    help="pytest-xdist processes for the tests (1: none; default: half the host's cores, at most 8)")
    ap.add_argument("--steps-only", action="store_true", help="time one-row steps only: no loop, projection or tests")
    ap.add_argument("--records", nargs="*", type=Path, default=CPU_RECORDS,
                    help="`adasd bench` results.json files whose per-round traces the projection replays")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--position", type=int, default=256)
    ap.add_argument("--cache-len", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--copy-gib", type=float, default=2.0, help="size of the bandwidth probe's copy")
    ap.add_argument("--json", help="write all figures here")
    ap.add_argument("--steps-from", type=Path, help="no device: project --records from this earlier check's JSON")
    a = ap.parse_args(argv)
    if a.steps_from:
        projected = project_saved(a.steps_from, a.records)
        if a.json:
            Path(a.json).write_text(json.dumps({"steps_from": str(a.steps_from), "projected": projected}, indent=1))
        return 0
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # the test subprocess needs the device too

    import jax
    import jax.numpy as jnp

    from adasd_jax import models
    from adasd_jax import engine
    from adasd_jax.bench.roofline import DRAFT, TARGET

    start = time.perf_counter()
    dev = jax.devices()[0]
    report = {"device": dev.device_kind, "platform": dev.platform, "jax": jax.__version__}
    print(f"jax {jax.__version__} on {dev.platform}: {dev.device_kind}", flush=True)
    bw = copy_bandwidth(jax, jnp, a.copy_gib)
    sheet = datasheet(dev.device_kind)
    report.update(copy_gb_s=bw, datasheet_gb_s=sheet)
    print(f"\nbandwidth: copy {bw:.0f} GB/s (read+write); datasheet {sheet or '?'} GB/s")
    runs = {} if a.steps_only else load_runs(a.records)
    rows = [1] if a.steps_only else verify_rows(recorded_caps(runs) | {4})  # 4: the loop check's sd:K=4
    tprog = step_programs(jax, jnp, models, TARGET, rows, a.position, a.cache_len)
    dprog = step_programs(jax, jnp, models, DRAFT, [1] if a.steps_only else [1, 2], a.position, a.cache_len)
    builds = {("target", k): f for k, f in tprog["build"].items()} | {("draft", k): f for k, f in dprog["build"].items()}
    if not a.steps_only:
        pair = loop_pair(engine, TARGET, DRAFT, tprog["params"], dprog["params"])
        builds |= {("loop", m): functools.partial(engine.precompile, pair, [LOOP_PROMPT], method=m,
                                                  max_new_tokens=a.new_tokens) for m in LOOP_METHODS}
    built, wall = compile_all(builds)
    report["compile_s"] = wall
    print(f"compiled {len(builds)} programs at once in {wall:.1f}s")
    t = time_steps(TARGET, tprog, {k: v for (m, k), v in built.items() if m == "target"}, a.repeats)
    d = time_steps(DRAFT, dprog, {k: v for (m, k), v in built.items() if m == "draft"}, a.repeats)
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

    if a.steps_only:
        a.skip_tests = True
    else:
        loops = loop_times(engine, pair, a.new_tokens, {m: built[("loop", m)] for m in LOOP_METHODS})
        ar_limit = 1e3 / t[1]["step_ms"]
        # random weights reject the first proposal of every round: 4 one-token draft forwards and 5 verified rows
        loops["sd:K=4"]["predicted_ms_per_round"] = t[5]["step_ms"] + 4 * d[1]["step_ms"]
        for m, r in loops.items():
            print(
                f"loop {m:7}: {r['tokens_per_s']:8.1f} tok/s, {r['ms_per_round']:.3f} ms/round over {r['rounds']} "
                f"rounds (compiled in {r['compile_s']:.1f}s, alongside the others)"
            )
        print(f"ar loop reaches {loops['ar']['tokens_per_s'] / ar_limit:.3f} of 1/step ({ar_limit:.1f} tok/s); "
              f"sd:K=4 round {loops['sd:K=4']['ms_per_round']:.3f} ms against "
              f"{loops['sd:K=4']['predicted_ms_per_round']:.3f} ms from the steps")
        report.update(loops=loops, ar_vs_step_limit=loops["ar"]["tokens_per_s"] / ar_limit)

        report["projected"] = print_projections(runs, t, d, f"on {dev.device_kind}", "here")
    report["timing_s"] = time.perf_counter() - start
    print(f"\ntimings took {report['timing_s']:.0f}s", flush=True)
    if a.json:  # written now too, so that the figures survive a check stopped during the tests
        Path(a.json).write_text(json.dumps(report, indent=1, default=str))
    if not a.skip_tests:  # last: the timings above need the device alone
        try:
            import xdist  # noqa: F401

            workers = a.test_workers
        except ImportError:
            workers = 1
        timeout = time_for_tests(a.budget, time.perf_counter() - STARTED, a.test_timeout)
        print(f"tests: {timeout}s of the {a.budget:.0f}s budget", flush=True)
        report["tests"] = run_tests("cuda" if dev.platform == "gpu" else dev.platform, timeout, workers)
    report["whole_s"] = time.perf_counter() - STARTED
    print(f"whole check: {report['whole_s']:.0f}s (budget {a.budget:.0f}s)", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1, default=str))
    return 0 if report.get("tests", {}).get("returncode", 0) == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
