"""Interleaved benchmark: every method on the same prompts in one run, so machine drift hits all alike.

    python -m adasd_jax.bench.runner --methods ar,sd:K=2,sd:K=4,sd:K=8,adasd --limit 10 \
        --max-new-tokens 128 --dtype bfloat16 --out results.json

Prints tokens/s (compilation apart), speedups over `ar` and the best `sd` measured in this run,
tokens per target call, drafted/wasted/lossy counts, AdaSD's final thresholds, accuracy and the
token agreement with `ar` (exact equality for lossless methods is checked and reported).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import models
from adasd_jax import engine
from adasd_jax.bench import datasets
from adasd_jax.cli import add_mesh_arg
from adasd_jax.policies import Method

DEFAULT_GSM8K = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "gsm8k" / "train.jsonl"


def time_target_step(pair: engine.Pair, position: int = 256, repeats: int = 10) -> float:
    """Median seconds of one jitted one-token target decode step (B=1), the `ar` speed limit."""
    c, p = pair.target.config, pair.target.params
    cache = models.init_cache(c, 1, position + 128, jax.tree.leaves(p)[0].dtype).with_lengths(jnp.asarray([position]))
    step = jax.jit(models.forward, static_argnums=1)
    tok = jnp.asarray([[1]], jnp.int32)
    jax.block_until_ready(step(p, c, tok, cache))
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(step(p, c, tok, cache))
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def agreement(a: list[int], b: list[int]) -> float:
    """Fraction of b's positions where a has the same token (positional, over b's length)."""
    if not b:
        return 1.0
    return sum(x == y for x, y in zip(a, b)) / len(b)


def run(pair: engine.Pair, problems: list[datasets.Problem], methods: list[str], max_new_tokens: int,
        temperature: float = 0.0, seed: int = 0, progress: bool = True) -> dict:
    """Run every method on every problem (batch 1), rotating the method order per problem."""
    records = {m: [] for m in methods}
    for i, prob in enumerate(problems):
        order = methods[i % len(methods):] + methods[:i % len(methods)]
        for spec in order:
            out = engine.generate(pair, [prob.prompt], method=spec, max_new_tokens=max_new_tokens,
                                  temperature=temperature, chat=prob.chat, seed=seed + i)
            records[spec].append({
                "problem": prob.id, "tokens": out.tokens[0], "text": out.texts[0] if out.texts else None,
                "correct": datasets.gsm8k_correct(out.texts[0], prob.answer) if out.texts else None,
                "run_s": out.run_s, "compile_s": out.compile_s,
                **{k: v.item() for k, v in out.metrics.items()}})
        if progress:
            done = {m: sum(r["new_tokens"] for r in records[m]) / sum(r["run_s"] for r in records[m]) for m in methods}
            print(f"[{i + 1}/{len(problems)}] " + "  ".join(f"{m} {v:.2f} tok/s" for m, v in done.items()),
                  file=sys.stderr, flush=True)
    return records


def summarize(records: dict, methods: list[str]) -> dict:
    ref = records.get("ar")
    rows = {}
    for m in methods:
        rs = records[m]
        tok, secs = sum(r["new_tokens"] for r in rs), sum(r["run_s"] for r in rs)
        calls = sum(r["rounds"] + 1 for r in rs)
        row = {"tokens_per_s": tok / secs, "new_tokens": tok, "run_s": secs,
               "compile_s": sum(r["compile_s"] for r in rs), "target_calls": calls, "tokens_per_call": tok / calls,
               "drafted": sum(r["drafted"] for r in rs), "wasted": sum(r["drafted"] - r["accepted"] for r in rs),
               "lossy": sum(r["lossy"] for r in rs), "declined_rounds": sum(r["declined"] for r in rs),
               "t_g": rs[-1]["t_g"], "t_v": rs[-1]["t_v"]}
        if rs[0]["correct"] is not None:
            row["accuracy"] = sum(bool(r["correct"]) for r in rs) / len(rs)
        if ref is not None:
            row["agreement_with_ar"] = float(np.mean([agreement(r["tokens"], a["tokens"]) for r, a in zip(rs, ref)]))
            row["identical_to_ar"] = sum(r["tokens"] == a["tokens"] for r, a in zip(rs, ref))
        rows[m] = row
    sd = [m for m in methods if m.startswith("sd")]
    best_sd = max(sd, key=lambda m: rows[m]["tokens_per_s"]) if sd else None
    for m, row in rows.items():
        if "ar" in rows:
            row["speedup_vs_ar"] = row["tokens_per_s"] / rows["ar"]["tokens_per_s"]
        if best_sd:
            row["speedup_vs_best_sd"] = row["tokens_per_s"] / rows[best_sd]["tokens_per_s"]
    return {"methods": rows, "best_sd": best_sd}


def markdown(summary: dict) -> str:
    cols = ["tokens_per_s", "speedup_vs_ar", "speedup_vs_best_sd", "tokens_per_call", "target_calls", "drafted",
            "wasted", "lossy", "declined_rounds", "t_g", "t_v", "accuracy", "agreement_with_ar", "identical_to_ar"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for m, row in summary["methods"].items():
        cells = [f"{row[c]:.3f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draft"), ap.add_argument("--target")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--methods", default="ar,sd:K=2,sd:K=4,sd:K=8,adasd,adasd:count_declined=0")
    ap.add_argument("--data-file", default=str(DEFAULT_GSM8K))
    ap.add_argument("--limit", type=int, default=10), ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0)
    add_mesh_arg(ap)
    ap.add_argument("--out", help="write the configuration, per-problem records and summary as JSON")
    a = ap.parse_args(argv)
    methods = a.methods.split(",")
    for m in methods:
        Method.parse(m)  # fail fast on a bad method name
    problems = datasets.gsm8k(a.data_file, a.limit, a.offset)
    t = time.perf_counter()
    pair = engine.load_pair(draft=a.draft, target=a.target, dtype=a.dtype, mesh=a.mesh,
                            replicate_draft=not a.shard_draft)
    print(f"loaded pair in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    step = time_target_step(pair)
    records = run(pair, problems, methods, a.max_new_tokens, a.temperature, a.seed)
    summary = summarize(records, methods)
    summary["target_step_s"] = step
    if "ar" in summary["methods"]:
        summary["ar_vs_step_limit"] = summary["methods"]["ar"]["tokens_per_s"] * step
    print(markdown(summary))
    print(f"\none jitted target decode step: {step * 1e3:.1f} ms (1/step = {1 / step:.2f} tok/s)"
          + (f"; ar reaches {summary['ar_vs_step_limit']:.3f} of it" if "ar_vs_step_limit" in summary else ""))
    if a.out and jax.process_index() == 0:  # multi-host: one writer
        config = {"argv": sys.argv, "draft": pair.draft.source if pair.draft else None, "target": pair.target.source,
                  "dtype": a.dtype, "device": str(jax.devices()[0]), "jax": jax.__version__,
                  "machine": platform.platform(), "data_file": a.data_file, "offset": a.offset, "limit": a.limit,
                  "max_new_tokens": a.max_new_tokens, "temperature": a.temperature, "seed": a.seed}
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"config": config, "summary": summary, "records": records}, indent=1))


if __name__ == "__main__":
    main()
