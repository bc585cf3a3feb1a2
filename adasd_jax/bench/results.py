"""Result sets of `adasd bench`: written atomically (results.json, results.md, plots), the checkpoint an interrupted
run resumes from, several runs merged into one, and a run scored again (--merge, --resume, --rescore)."""
from __future__ import annotations

import ast
import dataclasses
import json
import math
import sys
from pathlib import Path

import jax

from adasd_jax import sharding
from adasd_jax.bench import datasets, execution, provenance, report, run_loop
from adasd_jax.bench.options import PARTIAL
from adasd_jax.models.load import orbax_io
from adasd_jax.policies import Method

# configuration keys that may differ between runs that are merged into one result set
PER_RUN = {"argv", "commit", "offset", "limit", "problems", "machine", "cpu", "merged_from", "replaced", "rescored",
           "resumed"}


def _method_fields(text: str) -> dict:
    """A recorded `repr(Method)` as a dict; a switch added after the run was recorded takes its default."""
    call = ast.parse(text, mode="eval").body
    got = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    return {f.name: got.get(f.name, f.default) for f in dataclasses.fields(Method)}


def _comparable(config: dict, key: str):
    """One configuration value as merging compares it (method settings field by field, not as text)."""
    if key == "method_settings" and key in config:
        return {m: _method_fields(text) for m, text in config[key].items()}
    if key == "seeds":  # runs recorded before --seeds ran each problem once
        return config.get(key, 1)
    return config.get(key)


def settings_diff(a: dict, b: dict, per_run=PER_RUN) -> list[str]:
    """Configuration keys, other than `per_run` ones, on which two runs differ."""
    return sorted(k for k in (set(a) | set(b)) - per_run if _comparable(a, k) != _comparable(b, k))


def merge(dirs: list[str | Path], replace: bool = False) -> tuple[dict, dict, dict]:
    """(config, summary, records) of several runs over disjoint problems with the same settings.

    Each problem's methods still ran interleaved within one run, so ratios and paired comparisons stay
    per-problem; every run's adasd threshold state started fresh, which the merged config records.
    With `replace`, a problem that a later directory ran again takes that run's records (a rerun of a
    problem that something else on the machine slowed); the config lists every replacement.
    """
    runs = []
    for d in dirs:
        f = Path(d) / "results.json"
        if not f.is_file():
            raise FileNotFoundError(f"--merge: {f} does not exist (pass directories written by `adasd bench`)")
        runs.append((Path(d), json.loads(f.read_text())))
    if len(runs) < 2:
        raise ValueError("--merge needs at least two result directories")
    first = runs[0][1]["config"]
    for d, r in runs[1:]:
        diff = settings_diff(first, r["config"])
        if diff:
            raise ValueError(f"--merge: {d} was run with different settings ({', '.join(diff)}); only runs of one "
                             "configuration over different problems can be merged")
    seen: dict[str, int] = {}  # problem -> index of the run whose records are kept
    replaced = []
    for i, (d, r) in enumerate(runs):
        for pid in r["config"]["problems"]:
            if pid in seen:
                if not replace:
                    raise ValueError(f"--merge: problem {pid} is in both {runs[seen[pid]][0]} and {d} "
                                     "(pass --replace to keep the later run of a rerun problem)")
                replaced.append({"problem": pid, "dropped_from": str(runs[seen[pid]][0]), "kept_from": str(d)})
            seen[pid] = i
    methods = first["methods"]
    records = {m: [rec for pid, i in seen.items() for rec in runs[i][1]["records"][m] if rec["problem"] == pid]
               for m in methods}
    steps = [x for _, r in runs for x in r["summary"].get("target_step_samples_s", [])]
    config = {**first, "argv": sys.argv, "commit": provenance.source_commit(), "problems": list(seen),
              "offset": min(r["config"]["offset"] for _, r in runs), "limit": len(seen),
              "threshold_state": first["threshold_state"] + f"; reset at the start of each of the {len(runs)} runs",
              "merged_from": [{"dir": str(d), "argv": r["config"]["argv"], "commit": r["config"].get("commit"),
                               "first": r["config"]["problems"][0], "last": r["config"]["problems"][-1]}
                              for d, r in runs], "replaced": replaced}
    summary = report.summarize(records, methods, greedy=first["temperature"] == 0, step_samples=steps or None,
                               batch_size=first["batch_size"])
    return config, summary, records


def rescore(d: str | Path, humaneval_extract: str = "spec", timeout: float = execution.TIMEOUT_S,
            unsafe_exec: bool = False) -> tuple[dict, dict, dict]:
    """(config, summary, records) of a result directory scored again with the current scorer: the same tokens,
    times and ratios; the accuracy (and each record's score) may change."""
    f = Path(d) / "results.json"
    if not f.is_file():
        raise FileNotFoundError(f"--rescore: {f} does not exist (pass a directory written by `adasd bench`)")
    r = json.loads(f.read_text())
    cfg = r["config"]
    if cfg["dataset"] == "mtbench":
        raise ValueError("--rescore: MT-bench results are not scored")
    if cfg["dataset"] == "humaneval":
        execution.require_isolation(unsafe_exec)
    problems = {p.id: p for p in datasets.load(cfg["dataset"], cfg.get("data_file"))}
    records, cache = r["records"], {}
    for recs in records.values():
        for rec in recs:
            prob = problems[rec["problem"].split("#s")[0]]  # a --seeds repeat scores as its problem
            rec["correct"], rec["score"] = run_loop.score(prob, rec["text"], timeout, cache, humaneval_extract,
                                                          unsafe_exec)
    config = {**cfg, "prompt_template": datasets.template(cfg["dataset"], humaneval_extract),
              "humaneval_extract": humaneval_extract, "humaneval_timeout_s": timeout,
              "rescored": {"from": str(d), "argv": sys.argv, "commit": provenance.source_commit()}}
    summary = report.summarize(records, cfg["methods"], greedy=cfg["temperature"] == 0,
                               step_samples=r["summary"].get("target_step_samples_s") or None,
                               batch_size=cfg["batch_size"])
    return config, summary, records


def read_partial(path: Path) -> str | None:
    """The checkpoint's text as process 0 reads it, on every process (only process 0 writes it)."""
    return sharding.from_main_process(path.read_text() if jax.process_index() == 0 and path.is_file() else None)


def load_partial(path: Path, text: str | None) -> dict:
    """The checkpoint of an interrupted run (`text`: read_partial's), with errors that name the fix."""
    if text is None:
        raise FileNotFoundError(f"--resume: {path} does not exist: no interrupted run to continue in this --out-dir")
    try:
        saved = json.loads(text)
    except json.JSONDecodeError:
        saved = None
    if not isinstance(saved, dict) or not {"config", "records", "chunks_done"} <= saved.keys():
        raise ValueError(f"--resume: {path} is not a checkpoint written by `adasd bench`; remove it to start afresh")
    return saved


def resumed_config(saved: dict, config: dict, start_problem: str, commit: str | None) -> dict:
    """The interrupted run's configuration, after checking that this run's settings are the same, with the resume
    recorded: the adasd threshold state restarts there (it lived in the interrupted process)."""
    diff = settings_diff(saved["config"], config, PER_RUN - {"offset", "limit", "problems"})
    if diff:
        raise ValueError(f"--resume: the interrupted run had different settings ({', '.join(diff)}); rerun its command "
                         f"(config.argv in {PARTIAL}) with --resume")
    old = saved["config"]
    return {**old, "resumed": old.get("resumed", []) + [{"at": start_problem, "argv": sys.argv, "commit": commit}],
            "threshold_state": old["threshold_state"] + f"; reset when the run resumed at {start_problem}"}


def _finite(x):
    """JSON has no inf/nan: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write_results(out: Path, config: dict, summary: dict, records: dict, plots: bool = True) -> dict:
    """results.json, results.md and the PNGs, written into a temp directory that then replaces `out` in one step
    (check_out_dir refused an `out` holding other files first, unless --overwrite); prints the table. Returns what
    results.json holds."""
    out = Path(out).absolute()
    orbax_io.sweep(out)
    tmp = orbax_io.temp_sibling(out)
    try:
        tmp.mkdir(parents=True)
        table = report.markdown(summary, config)
        report.write_atomic(tmp / "results.md", table)
        result = _finite({"config": config, "summary": summary, "records": records})
        report.write_atomic(tmp / "results.json", json.dumps(result, indent=1))
        pngs = [out / p.name for p in report.plots(records, summary, tmp)] if plots else []
        orbax_io.publish(tmp, out)
    except BaseException:
        orbax_io.remove(tmp)
        raise
    print(table)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}" + "".join(f", {p}" for p in pngs))
    return result
