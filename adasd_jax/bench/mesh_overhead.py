"""Tokens/s of the same pair on one device and on a mesh, interleaved (CPU: checks overhead, not speedup).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m adasd_jax.bench.mesh_overhead \
        --target ~/.cache/adasd-jax/models/SmolLM2-135M-Instruct.Q4_1.gguf --draft-layers 8 \
        --mesh data=2,model=4 --methods ar,adasd --max-new-tokens 32 --repeats 3

The draft is the target's first layers (self-speculative). Forced host devices share the machine's
cores, so a mesh cannot be faster here; what this measures is what sharding costs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"

import jax  # noqa: E402

from adasd_jax import models  # noqa: E402
from adasd_jax import engine, loading, sharding  # noqa: E402

PROMPT = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
          "How many clips did Natalia sell altogether in April and May?")


def print_loop_collectives(pair: engine.Pair) -> None:
    """Per compiled program: each loop computation's collectives (count x kind x result shape)."""
    from collections import Counter

    from adasd_jax.bench.hlo import in_loop_collectives

    for lc, _, _, compiled in engine.generate_programs(pair):
        found = in_loop_collectives(compiled.as_text())
        print(f"\n{lc.method!r}: {len(found)} collectives inside the loops")
        for comp in dict.fromkeys(c.computation for c in found):
            counts = Counter(f"{c.kind} {c.shape}" for c in found if c.computation == comp)
            print(f"  {comp}: " + "; ".join(f"{n} x {k}" for k, n in counts.most_common()))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft-layers", type=int, default=8)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--mesh", default="data=2,model=4")
    ap.add_argument("--methods", default="ar,adasd")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1, help="copies of the prompt per call")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--shard-draft", action="store_true", help="shard the draft like the target (default: replicated)")
    ap.add_argument("--rule", action="append", help="remap a logical axis, e.g. ffn=model+data, or 2d (repeatable; see adasd_jax.sharding)")
    ap.add_argument("--collectives", action="store_true",
                    help="also list the collectives inside the mesh program's loops (per computation)")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    c, params, tok = models.load(a.target, a.dtype)
    dc, dp = models.first_layers(c, params, a.draft_layers)
    one = engine.Pair(target=engine.Model(c, params, a.target), draft=engine.Model(dc, dp, f"layers:{a.draft_layers}"),
                      tokenizer=tok, vocab=c.vocab_size)
    pairs = {"one device": one, f"mesh {a.mesh}": loading.shard(one, a.mesh, replicate_draft=not a.shard_draft,
                                                             rules=sharding.parse_rules(a.rule))}
    prompts = [PROMPT] * a.batch
    rows, tokens = {}, {}
    for method in a.methods.split(","):
        for name, pair in pairs.items():  # compile both first
            out = engine.generate(pair, prompts, method=method, max_new_tokens=a.max_new_tokens, reset_state=True)
            rows[(method, name)] = {"compile_s": out.compile_s, "tok_s": []}
            tokens[(method, name)] = out.tokens
        for _ in range(a.repeats):  # interleaved, so load on the shared machine hits both alike
            for name, pair in pairs.items():
                out = engine.generate(pair, prompts, method=method, max_new_tokens=a.max_new_tokens, reset_state=True)
                rows[(method, name)]["tok_s"].append(out.tokens_per_s)
    print(f"devices: {jax.device_count()} ({jax.devices()[0].platform}), target {a.target}, draft first "
          f"{a.draft_layers} layers ({'sharded' if a.shard_draft else 'replicated'} on the mesh), {a.dtype}, "
          f"batch {a.batch}, {a.max_new_tokens} new tokens, greedy, rules {a.rule or 'default'}")
    print("| method | placement | tokens/s (median) | runs | compile s | same tokens as one device |")
    print("|---|---|---|---|---|---|")
    result = []
    for (method, name), r in rows.items():
        med = statistics.median(r["tok_s"])
        same = tokens[(method, name)] == tokens[(method, "one device")]
        print(f"| {method} | {name} | {med:.2f} | {', '.join(f'{x:.2f}' for x in r['tok_s'])} | "
              f"{r['compile_s']:.1f} | {same} |")
        result.append({"method": method, "placement": name, "tokens_per_s": med, "runs": r["tok_s"],
                       "compile_s": r["compile_s"], "same_tokens": same})
    if a.collectives:
        print_loop_collectives(pairs[f"mesh {a.mesh}"])
    for method in a.methods.split(","):
        base = statistics.median(rows[(method, "one device")]["tok_s"])
        mesh = statistics.median(rows[(method, f"mesh {a.mesh}")]["tok_s"])
        print(f"{method}: mesh is {base / mesh:.2f}x slower than one device")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"argv": sys.argv, "rows": result}, f, indent=1)


if __name__ == "__main__":
    main()
