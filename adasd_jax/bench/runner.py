"""Runs `adasd bench` from its parsed, checked arguments (`options`): loads the pair, runs every method on each
problem in turn (`run_loop`), checkpoints after each batch of problems, and writes the result set (`results`)."""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import jax

from adasd_jax import engine, loading
from adasd_jax.args import mesh_kwargs, quantize_kwargs
from adasd_jax.bench import datasets, options, peers, provenance, report, results, run_loop
from adasd_jax.bench.methods import split_methods
from adasd_jax.policies import Method


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
    if a.dataset == "gsm8k" and a.data_file is None:
        return datasets.gsm8k_hub(a.split or "test", limit, a.offset)
    return datasets.load(a.dataset, a.data_file, limit, a.offset), a.data_file


def bench(a, pair: engine.Pair | None = None, hf: peers.HFPair | None = None) -> dict:
    """Run `adasd bench` from parsed arguments; a loaded pair (and peers) may be passed in to reuse compilations."""
    options.check(a)
    if a.merge:
        return results.write_results(Path(a.out_dir), *results.merge(a.merge, a.replace), plots=not a.no_plots)
    if a.rescore:
        return results.write_results(Path(a.out_dir), *results.rescore(a.rescore, a.humaneval_extract, a.exec_timeout,
                                                                        a.unsafe_exec), plots=not a.no_plots)
    # the code this run imports: read before a long run, while the checkout may change
    commit = provenance.source_commit()
    methods = split_methods(a.methods)
    partial = Path(a.out_dir) / options.PARTIAL
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


def main(argv=None) -> int:
    a = options.parser().parse_args(argv)
    try:
        bench(a)
    except KeyboardInterrupt:
        partial = Path(a.out_dir) / options.PARTIAL
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
