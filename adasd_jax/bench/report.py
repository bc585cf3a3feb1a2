"""Summaries, paired accuracy comparisons, the Markdown table and the PNG plots of a benchmark run."""
from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from adasd_jax.bench.peers import PEERS
from adasd_jax.policies import Method

Z95 = 1.96


def is_lossless(method: str) -> bool:
    """Greedy output must equal the target's own greedy output (ar) token for token."""
    return method in PEERS or Method.parse(method).lossless


def agreement(a: list[int], b: list[int]) -> float:
    """Fraction of b's positions where a has the same token (positional, over the longer length)."""
    n = max(len(a), len(b))
    return 1.0 if n == 0 else sum(x == y for x, y in zip(a, b)) / n


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """Index of the first differing token, None when identical."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def paired_difference(correct: list[bool], reference: list[bool]) -> dict:
    """Per-problem paired accuracy difference (method - reference) in points, with a 95% normal interval."""
    d = np.asarray(correct, float) - np.asarray(reference, float)
    n = len(d)
    mean = float(d.mean()) if n else 0.0
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else None  # one problem: no interval
    ci = None if se is None else [100 * (mean - Z95 * se), 100 * (mean + Z95 * se)]
    return {"n": n, "diff_points": 100 * mean, "ci95_points": ci,
            "only_method_right": int((d > 0).sum()), "only_reference_right": int((d < 0).sum())}


def _sum(rs, key):
    vals = [r.get(key) for r in rs]
    return None if any(v is None for v in vals) else sum(vals)


def _rate(rs: list[dict], problems: set | None = None) -> float:
    """Tokens/s over the records (of the given problems)."""
    rs = [r for r in rs if problems is None or r["problem"] in problems]
    secs = sum(r["run_s"] for r in rs)
    return sum(r["new_tokens"] for r in rs) / secs if secs > 0 else 0.0


def speedup(records: dict, method: str, reference: str) -> float | None:
    """method's tokens/s over reference's, both on the problems they share (peers may cover a prefix only)."""
    shared = {r["problem"] for r in records[method]} & {r["problem"] for r in records[reference]}
    base = _rate(records[reference], shared) if shared else 0.0
    return _rate(records[method], shared) / base if base > 0 else None


def per_problem_ratios(records: dict, method: str, reference: str) -> dict | None:
    """Paired per-problem speed ratios (method / reference tokens/s, batch-1 records only): their median, range
    and on how many problems the method was faster. Robust to one problem that a noisy machine slowed."""
    rate = lambda r: r["new_tokens"] / r["run_s"]
    ref = {r["problem"]: r for r in records[reference] if r.get("batch", 1) == 1 and r["run_s"] > 0}
    q = [rate(r) / rate(ref[r["problem"]]) for r in records[method]
         if r.get("batch", 1) == 1 and r["run_s"] > 0 and r["problem"] in ref and rate(ref[r["problem"]]) > 0]
    if not q:
        return None
    return {"n": len(q), "median": float(np.median(q)), "min": float(min(q)), "max": float(max(q)),
            "faster": int(sum(x > 1 for x in q))}


# (column, reference method or role) for the speed ratios every row gets when the reference ran
RATIOS = [("speedup_vs_ar", "ar"), ("speedup_vs_sd_k4", "sd_k4"), ("speedup_vs_best_sd", "best_sd"),
          ("speedup_vs_hf_ar", "hf-ar"), ("speedup_vs_hf_assisted", "hf-assisted")]


def summarize(records: dict, methods: list[str], greedy: bool = True, step_samples: list[float] | None = None,
              batch_size: int = 1) -> dict:
    """Per-method totals, fidelity to `ar` and paired accuracy (matched by problem id), and the speed ratios."""
    ref = {r["problem"]: r for r in records.get("ar", [])}
    rows = {}
    for m in methods:
        rs = records[m]
        tok, secs = sum(r["new_tokens"] for r in rs), sum(r["run_s"] for r in rs)
        rounds = _sum(rs, "rounds")
        calls = None if rounds is None else rounds + len(rs)  # the prefill is one more target call per problem
        if m == "hf-ar":
            calls = tok
        drafted, accepted = _sum(rs, "drafted"), _sum(rs, "accepted")
        row = {"n": len(rs), "tokens_per_s": _rate(rs), "new_tokens": tok, "run_s": secs,
               "compile_s": sum(r["compile_s"] for r in rs), "target_calls": calls,
               "tokens_per_call": tok / calls if calls else None,
               "accepted_per_round": accepted / rounds if rounds else None, "drafted": drafted,
               "wasted": None if drafted is None else drafted - accepted, "lossy": _sum(rs, "lossy"),
               "declined_rounds": _sum(rs, "declined"), "draft_steps": _sum(rs, "draft_steps"),
               "t_g": rs[-1].get("t_g"), "t_v": rs[-1].get("t_v")}
        if rs[-1].get("cost_draft") is not None:  # stop=cost: the table it ran with and the rate it reached
            row.update({k: rs[-1][k] for k in ("cost_draft", "cost_verify", "cost_source", "rate")})
        if row["t_g"] is None and m.split(":")[0] == "adasd":
            row["t_g"] = math.inf  # no rejection seen yet (written as null in JSON)
        if rs[0].get("correct") is not None:
            row["accuracy"] = sum(bool(r["correct"]) for r in rs) / len(rs)
        pairs = [(r, ref[r["problem"]]) for r in rs if r["problem"] in ref]
        if pairs:
            row["agreement_with_ar"] = float(np.mean([agreement(r["tokens"], a["tokens"]) for r, a in pairs]))
            row["identical_to_ar"] = sum(r["tokens"] == a["tokens"] for r, a in pairs)
            firsts = [first_divergence(r["tokens"], a["tokens"]) for r, a in pairs]
            row["first_divergences"] = [f for f in firsts if f is not None]
            if greedy and m != "ar" and is_lossless(m):
                row["lossless_check"] = "identical" if row["identical_to_ar"] == len(pairs) else "DIFFERS"
            if "accuracy" in row and m != "ar":
                row["paired_vs_ar"] = paired_difference([bool(r["correct"]) for r, _ in pairs],
                                                        [bool(a["correct"]) for _, a in pairs])
        rows[m] = row
    sd = [m for m in methods if m.split(":")[0] == "sd"]
    roles = {"best_sd": max(sd, key=lambda m: rows[m]["tokens_per_s"]) if sd else None,
             "sd_k4": next((m for m in sd if Method.parse(m).k == 4), None)}
    for m, row in rows.items():
        for col, who in RATIOS:
            reference = roles.get(who, who)
            if reference in rows:
                row[col] = speedup(records, m, reference)
        row["per_problem"] = {ref: p for ref in dict.fromkeys(["ar", roles["best_sd"]])
                              if ref in rows and ref != m and (p := per_problem_ratios(records, m, ref))}
    out = {"methods": rows, **roles}
    if step_samples:
        step = float(np.median(step_samples))
        out |= {"target_step_s": step, "target_step_samples": len(step_samples),
                "target_step_samples_s": list(step_samples)}  # kept so merged runs pool them
        if "ar" in rows and batch_size == 1:  # the bare step is a B=1 step
            out["ar_vs_step_limit"] = rows["ar"]["tokens_per_s"] * step
            ar = records["ar"]
            if ar and all("prefill_s" in r for r in ar):  # decode only: new_tokens - 1 steps after the prefill
                out["ar_prefill_s"] = sum(r["prefill_s"] for r in ar) / len(ar)
                decode_s = sum(r["run_s"] - r["prefill_s"] for r in ar)
                if decode_s > 0:  # a prefill timed apart on a loaded machine can outlast a short whole run
                    out["ar_decode_vs_step_limit"] = sum(r["new_tokens"] - 1 for r in ar) * step / decode_s
    return out


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.3f}"
    return str(v)


COLUMNS = ["n", "tokens_per_s", "compile_s", "speedup_vs_ar", "speedup_vs_sd_k4", "speedup_vs_best_sd",
           "speedup_vs_hf_ar", "speedup_vs_hf_assisted", "tokens_per_call",
           "accepted_per_round", "target_calls", "drafted", "wasted", "lossy", "accuracy", "agreement_with_ar",
           "identical_to_ar", "t_g", "t_v"]


def _cpu(config: dict) -> str:
    cpu = config.get("cpu") or {}
    return f" ({cpu['model']}; {', '.join(cpu.get('isa') or []) or 'no AVX2'})" if cpu.get("model") else ""


def markdown(summary: dict, config: dict) -> str:
    rows = summary["methods"]
    cols = [c for c in COLUMNS if any(r.get(c) is not None for r in rows.values())]
    if len({r["n"] for r in rows.values()}) == 1:
        cols.remove("n")
    n = max((r["n"] for r in rows.values()), default=0)
    seeds = config.get("seeds", 1)
    count = f"{n // seeds} problems x {seeds} seeds" if seeds > 1 else f"{n} problems"
    repeats = f" (each problem ran {seeds} times with new seeds, a repeat's id ends in #s<r>)" if seeds > 1 else ""
    lines = [(f"dataset **{config['dataset']}** ({count} from offset {config['offset']}), prompt template: "
             f"`{config['prompt_template']['user_message']}`, chat template "
             f"{'on' if config['prompt_template']['chat'] else 'off'}; {config['max_new_tokens']} new tokens, "
             f"temperature {config['temperature']}{repeats}, dtype {config['dtype']}, JAX batch {config['batch_size']} "
             f"(hf peers batch 1), device {config['device']}{_cpu(config)}. "
             f"Best fixed-K sd: {summary.get('best_sd') or '-'}."), "",
             "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    draft = (config.get("models") or {}).get("draft") or {}
    if draft.get("layers"):
        lines[0] += f" Draft: only the first {draft['layers']} layers of `{draft['source']}` (`--draft-layers`)."
    for m, row in rows.items():
        lines.append(f"| {m} | " + " | ".join(_cell(row.get(c)) for c in cols) + " |")
    if "n" in cols:
        lines += ["", ("Methods ran on different numbers of problems (column n: the torch peers on the first ones); "
                       "every ratio is taken over the problems both methods ran.")]
    if "target_step_s" in summary:
        s = summary["target_step_s"]
        lines += ["", f"One jitted target decode step (B=1), median of {summary['target_step_samples']} timings "
                      f"interleaved with the methods: {s * 1e3:.1f} ms (1/step = {1 / s:.2f} tok/s)"
                  + (f"; `ar` reaches {summary['ar_vs_step_limit']:.3f} of it" if "ar_vs_step_limit" in summary
                     else "")
                  + (f", and its decode steps {summary['ar_decode_vs_step_limit']:.3f} (its prefill, timed apart, "
                     f"taken out: {summary['ar_prefill_s']:.2f} s per problem)." if "ar_decode_vs_step_limit" in summary
                     else ".")]
    if config.get("merged_from"):
        lines += ["", "Merged from " + ", ".join(f"`{x['dir']}` (problems {x['first']}..{x['last']}, "
                                                 f"commit {x.get('commit') or 'unrecorded'})"
                                                 for x in config["merged_from"]) + "."]
        lines += [f"Problem {x['problem']}: the run in `{x['kept_from']}` replaces the one in `{x['dropped_from']}`."
                  for x in config.get("replaced", [])]
    per = [(m, r["per_problem"]) for m, r in rows.items() if r.get("per_problem")]
    if per:
        lines += ["", ("Per-problem speed ratios (batch 1; median [min, max] of method / reference tokens/s on each "
                       "problem both ran, and on how many the method was faster):"), ""]
        for m, refs in per:
            lines.append(f"- `{m}`: " + "; ".join(
                f"vs {ref} {p['median']:.3f} [{p['min']:.2f}, {p['max']:.2f}], faster on {p['faster']}/{p['n']}"
                for ref, p in refs.items()))
    checks = [(m, r) for m, r in rows.items() if "lossless_check" in r]
    if checks:
        lines += ["", ("Lossless methods vs `ar` (greedy; exact equality is a float32 statement, in bfloat16 "
                       "near-ties can flip an argmax):"), ""]
        for m, r in checks:
            flag = "identical" if r["lossless_check"] == "identical" else "**NOT IDENTICAL**"
            first = r["first_divergences"]
            lines.append(f"- `{m}`: {r['identical_to_ar']}/{r['n']} outputs identical to ar ({flag}); token agreement "
                         f"{r['agreement_with_ar']:.4f}" + (f"; first divergences at tokens {first}" if first else ""))
    paired = [(m, r["paired_vs_ar"]) for m, r in rows.items() if "paired_vs_ar" in r]
    if paired:
        lines += ["", "Paired accuracy vs `ar` (method - ar, points, 95% interval = mean ± 1.96·SE over problems):", ""]
        for m, p in paired:
            ci = "[n/a]" if p["ci95_points"] is None else "[{:+.1f}, {:+.1f}]".format(*p["ci95_points"])
            lines.append(f"- `{m}`: {p['diff_points']:+.1f} {ci} over {p['n']} problems "
                         f"(only {m} right: {p['only_method_right']}, only ar right: {p['only_reference_right']})")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- files

def write_atomic(path: str | Path, data: bytes | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return write_atomic(path, buf.getvalue())


def plots(records: dict, summary: dict, out_dir: str | Path) -> list[Path]:
    """speed_vs_accuracy.png, accepted_lengths.png and thresholds.png (the last two need traces)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir, written = Path(out_dir), []
    rows = summary["methods"]
    metric = "accuracy" if any("accuracy" in r for r in rows.values()) else "agreement_with_ar"
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for m, r in rows.items():
        if r.get(metric) is not None:
            ax.scatter(r["tokens_per_s"], r[metric], marker="s" if m in PEERS else "o")
            ax.annotate(m, (r["tokens_per_s"], r[metric]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("tokens/s (compilation excluded)")
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title("speed vs " + metric.replace("_", " "))
    ax.grid(alpha=0.3)
    written.append(_save(fig, out_dir / "speed_vs_accuracy.png"))
    plt.close(fig)

    traced = {m: [r["trace"] for r in rs if r.get("trace")] for m, rs in records.items()}
    drafting = {m: ts for m, ts in traced.items() if ts and m != "ar"}
    if drafting:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        top = max(max(t["draft_len"], default=0) for ts in drafting.values() for t in ts)
        bins = np.arange(top + 2) - 0.5
        for m, ts in drafting.items():
            acc = np.concatenate([np.asarray(t["accepted"], int) for t in ts])
            ax.hist(acc, bins=bins, density=True, histtype="step", linewidth=1.5, label=f"{m} (mean {acc.mean():.2f})")
        ax.set_xlabel("draft tokens accepted per round")
        ax.set_ylabel("fraction of rounds")
        ax.legend(fontsize=7)
        ax.set_title("accepted length per target call (minus the target's own token)")
        written.append(_save(fig, out_dir / "accepted_lengths.png"))
        plt.close(fig)
    # one row per generate call: with pooled state every row of a batch saw the same thresholds
    adaptive = {m: [r["trace"] for r in rs if r.get("trace") and r.get("row", 0) == 0]
                for m, rs in records.items() if m.split(":")[0] == "adasd"}
    adaptive = {m: ts for m, ts in adaptive.items() if ts}
    if adaptive:
        fig, (a1, a2) = plt.subplots(2, 1, figsize=(7.5, 5.5), sharex=True)
        for m, ts in adaptive.items():
            tg = np.concatenate([np.asarray(t["t_g"], float) for t in ts])
            tv = np.concatenate([np.asarray(t["t_v"], float) for t in ts])
            tg[~np.isfinite(tg)] = np.nan  # +inf before the first rejection: a gap
            a1.plot(tg, linewidth=1, label=m)
            a2.plot(tv, linewidth=1, label=m)
        a1.set_ylabel("T_G (nats)")
        a2.set_ylabel("T_V (JS distance)")
        a2.set_xlabel("round (over the whole run, problems in order)")
        a1.legend(fontsize=7)
        a1.set_title("AdaSD thresholds over rounds")
        written.append(_save(fig, out_dir / "thresholds.png"))
        plt.close(fig)
    return written
