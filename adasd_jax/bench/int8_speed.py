"""bf16 against int8 weights in one interleaved run: decode steps and whole generations, greedy, batch 1.

    python -m adasd_jax.bench.int8_speed --gsm8k-file train.jsonl [--limit 3] [--max-new-tokens 64] [--repeats 5]

Loads the default pair (or --draft/--target) twice, bf16 and int8, and builds three pairs from the four models:
bf16/bf16, int8/int8 and an int8 draft with the bf16 target. Prints (1) one-row decode step times of each of the
four models, interleaved, median of --repeats, with the draft step as a fraction of its pair's target step; (2) for
each problem in turn, every (pair, method) generation, reporting tokens/s over all problems, each ratio to bf16
`ar`, and the greedy token agreement of int8 `ar` with bf16 `ar` (the fraction of tokens emitted before the first
difference, and position by position).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from adasd_jax import engine, loading
from adasd_jax.bench import datasets
from adasd_jax.bench.run_loop import target_step_timer

RUNS = (("bf16", "ar"), ("int8", "ar"), ("bf16", "adasd"), ("int8", "adasd"), ("int8-draft", "adasd"),
        ("int8-draft", "sd:K=4"))


def pairs(a) -> dict[str, engine.Pair]:
    bf = loading.load_pair(a.draft, a.target, dtype="bfloat16")
    q8 = loading.load_pair(a.draft, a.target, dtype="bfloat16", quantize="int8")
    mixed = engine.Pair(target=bf.target, draft=q8.draft, tokenizer=bf.tokenizer, vocab=bf.vocab)
    return {"bf16": bf, "int8": q8, "int8-draft": mixed}


def step_times(ps: dict[str, engine.Pair], repeats: int) -> dict[str, float]:
    models_ = {"bf16 target": ps["bf16"], "int8 target": ps["int8"],
               "bf16 draft": engine.Pair(target=ps["bf16"].draft, draft=None, tokenizer=None, vocab=ps["bf16"].vocab),
               "int8 draft": engine.Pair(target=ps["int8"].draft, draft=None, tokenizer=None, vocab=ps["int8"].vocab)}
    timers = {k: target_step_timer(p) for k, p in models_.items()}
    samples = {k: [] for k in timers}
    for _ in range(repeats):
        for k, once in timers.items():
            samples[k].append(once())
    return {k: float(np.median(v)) for k, v in samples.items()}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draft"), ap.add_argument("--target")
    ap.add_argument("--gsm8k-file", required=True)
    ap.add_argument("--limit", type=int, default=3)
    ap.add_argument("--offset", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args(argv)
    ps = pairs(a)
    steps = step_times(ps, a.repeats)
    for k, s in steps.items():
        print(f"step {k:12s} {s * 1e3:7.1f} ms  ({steps['bf16 target'] / s:4.2f}x the bf16 target step)")
    for d, t in (("bf16 draft", "bf16 target"), ("int8 draft", "int8 target"), ("int8 draft", "bf16 target")):
        print(f"{d} / {t}: {steps[d] / steps[t]:.3f}")
    problems = datasets.load("gsm8k", a.gsm8k_file, a.limit, a.offset)
    prompts = [p.prompt for p in problems]
    for name, method in RUNS:  # compile every program first
        engine.generate(ps[name], prompts[:1], method=method, max_new_tokens=a.max_new_tokens)
    tokens, secs, out = {r: 0 for r in RUNS}, {r: 0.0 for r in RUNS}, {r: [] for r in RUNS}
    for prompt in prompts:
        for r in RUNS:
            o = engine.generate(ps[r[0]], [prompt], method=r[1], max_new_tokens=a.max_new_tokens)
            tokens[r] += int(o.metrics["new_tokens"].sum())
            secs[r] += o.run_s
            out[r].append(o.tokens[0])
    base = tokens[RUNS[0]] / secs[RUNS[0]]
    print(f"\n{len(prompts)} GSM8K problems from {a.offset}, {a.max_new_tokens} new tokens, greedy, batch 1")
    for r in RUNS:
        tps = tokens[r] / secs[r]
        print(f"{r[0]:10s} {r[1]:7s} {tps:6.2f} tok/s  {tps / base:4.2f}x bf16 ar")
    ref, got = out[("bf16", "ar")], out[("int8", "ar")]
    prefix = [next((i for i, (x, y) in enumerate(zip(u, v)) if x != y), min(len(u), len(v))) for u, v in zip(ref, got)]
    same = [np.mean([x == y for x, y in zip(u, v)]) for u, v in zip(ref, got)]
    print(f"int8 ar vs bf16 ar: identical prefix {sum(prefix)}/{sum(map(len, ref))} tokens "
          f"({[int(p) for p in prefix]}), position-wise agreement {np.mean(same):.3f}")
    for name in ("int8", "int8-draft"):
        lossless = out[(name, "sd:K=4")] if (name, "sd:K=4") in out else None
        if lossless is not None:
            ar_t = out[("int8", "ar")] if name == "int8" else out[("bf16", "ar")]
            print(f"{name} sd:K=4 equals its target's ar: {lossless == ar_t}")


if __name__ == "__main__":
    main()
