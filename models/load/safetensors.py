"""A Hugging Face model directory: config.json plus single or sharded *.safetensors (no torch)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import safe_open

from models.config import Config, from_hf
from models.load.convert import CheckpointError, hf_to_params


def _read_bf16(path: Path, name: str) -> np.ndarray:
    """safetensors' numpy API has no bfloat16: read the raw bytes at the header's offsets."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        info = json.loads(f.read(n))[name]
        start, end = info["data_offsets"]
        f.seek(8 + n + start)
        buf = f.read(end - start)
    if len(buf) != end - start:
        raise CheckpointError(f"{path} is truncated (tensor {name!r})")
    return np.frombuffer(buf, dtype=ml_dtypes.bfloat16).reshape(info["shape"]).astype(np.float32)


def _index(directory: Path) -> dict[str, Path]:
    """tensor name -> file holding it, from the shard index or the single file."""
    idx = directory / "model.safetensors.index.json"
    if idx.exists():
        weight_map = json.loads(idx.read_text())["weight_map"]
        files = {f: directory / f for f in set(weight_map.values())}
        missing = [str(p) for p in files.values() if not p.exists()]
        if missing:
            raise CheckpointError(f"shards listed in {idx.name} are missing: {missing}")
        return {k: files[v] for k, v in weight_map.items()}
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory} has a config.json but no *.safetensors weights")
    out = {}
    for p in files:
        try:
            with safe_open(str(p), framework="np") as f:
                out.update({k: p for k in f.keys()})
        except Exception as e:  # safetensors raises its own error types for bad headers
            raise CheckpointError(f"cannot read {p}: {e} (truncated or corrupt file?)") from e
    return out


def load_config(directory: Path) -> Config:
    path = directory / "config.json"
    try:
        return from_hf(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e


def load(directory: Path, dtype) -> tuple[Config, dict]:
    c = load_config(directory)
    where = _index(directory)
    handles = {}

    def get(name: str) -> np.ndarray:
        path = where[name]
        try:
            if path not in handles:
                handles[path] = safe_open(str(path), framework="np")
            f = handles[path]
            if f.get_slice(name).get_dtype() == "BF16":
                return _read_bf16(path, name)
            return f.get_tensor(name).astype(np.float32)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read tensor {name!r} from {path}: {e} (truncated or corrupt file?)") from e

    return c, hf_to_params(c, get, set(where), dtype)
