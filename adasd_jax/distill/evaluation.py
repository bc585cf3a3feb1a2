"""How a draft compares with its target before and after distillation: teacher-forced greedy agreement on
held-out text, and the engine's figures for each method (the benchmark's run loop and summary)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from adasd_jax.distill.losses import make_agreement


def teacher_forced_agreement(draft_config, draft_params, target_config, target_params, tokens, mask, segments,
                             dtype, batch_size: int = 4) -> float:
    agree = make_agreement(draft_config, target_config, dtype)
    same = total = 0.0
    for s in range(0, len(tokens), batch_size):
        rows = np.resize(np.arange(s, min(s + batch_size, len(tokens))), batch_size)  # static batch shape
        m = mask[rows] * (np.arange(batch_size) < len(tokens) - s)[:, None]
        a, n = agree(draft_params, target_params, jnp.asarray(tokens[rows]), jnp.asarray(m),
                     jnp.asarray(segments[rows]))
        same, total = same + float(a), total + float(n)
    return same / max(total, 1.0)


def evaluate(pair, problems, methods: list[str], max_new_tokens: int, eval_data: tuple, dtype,
             progress: bool = True) -> dict:
    """Greedy agreement (teacher-forced on held-out text) and engine figures for each method."""
    from adasd_jax.bench import report, run_loop

    pair.states.clear()
    agreement = teacher_forced_agreement(pair.draft.config, pair.draft.params, pair.target.config, pair.target.params,
                                         *eval_data, dtype)
    records = run_loop.run(pair, problems, methods, max_new_tokens, trace=False, progress=progress)
    summary = report.summarize(records, methods)
    rows = {}
    for m, r in summary["methods"].items():
        rounds = sum(x["rounds"] for x in records[m])
        rows[m] = {k: r.get(k) for k in ("tokens_per_s", "speedup_vs_ar", "tokens_per_call", "agreement_with_ar",
                                         "accuracy")}
        rows[m]["accepted_per_round"] = sum(x["accepted"] for x in records[m]) / max(rounds, 1)
    return {"greedy_agreement": agreement, "methods": rows}


def eval_table(before: dict | None, after: dict) -> str:
    lines = ["| | greedy agreement | " + " | ".join(f"{m} tok/s" for m in after["methods"]) + " | "
             + " | ".join(f"{m} x ar" for m in after["methods"] if m != "ar") + " | "
             + " | ".join(f"{m} tokens/target call" for m in after["methods"] if m != "ar") + " |"]
    lines.append("|---" * (1 + 1 + len(after["methods"]) + 2 * (len(after["methods"]) - 1)) + "|")
    for name, e in (("before", before), ("after", after)):
        if e is None:
            continue
        ms = e["methods"]
        cells = [f"{e['greedy_agreement']:.3f}"] + [f"{ms[m]['tokens_per_s']:.2f}" for m in ms]
        cells += [f"{ms[m]['speedup_vs_ar']:.3f}" for m in ms if m != "ar"]
        cells += [f"{ms[m]['tokens_per_call']:.2f}" for m in ms if m != "ar"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
