"""What a benchmark run records about itself: the models' sha256s, the source commit, the CPU, and the whole
configuration written into results.json."""
from __future__ import annotations

import hashlib
import os
import platform
import sys
from pathlib import Path

import jax

from adasd_jax.args import quantize_kwargs
from adasd_jax.bench import datasets, peers
from adasd_jax.fetch import file_sha256
from adasd_jax.policies import Method


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
