"""A Hugging Face model directory: config.json plus single or sharded *.safetensors (no torch)."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import safe_open

from ..config import Config, from_hf
from .convert import CheckpointError, hf_to_params


DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16}  # safetensors' numpy API lacks BF16


def _header(path: Path) -> tuple[int, dict]:
    """(offset of the data section, the header: tensor name -> dtype, shape, data_offsets)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return 8 + n, json.loads(f.read(n))


def _mapped(path: Path, data_start: int, info: dict, name: str) -> np.ndarray:
    """A read-only memory map of one tensor: slicing it reads only the slice's bytes from disk."""
    begin, end = info["data_offsets"]
    if data_start + end > path.stat().st_size:
        raise CheckpointError(f"{path} is truncated (tensor {name!r})")
    return np.memmap(path, dtype=DTYPES[info["dtype"]], mode="r", offset=data_start + begin,
                     shape=tuple(info["shape"]))


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
    """(config, tree of numpy arrays in `dtype`); dtype None: float tensors stay memory-mapped as stored, so that a
    sharded load reads and casts only each device's slice."""
    c = load_config(directory)
    where = _index(directory)
    headers, handles = {}, {}

    def get(name: str) -> np.ndarray:
        path = where[name]
        try:
            if path not in headers:
                headers[path] = _header(path)
            start, header = headers[path]
            if header[name]["dtype"] in DTYPES:
                return _mapped(path, start, header[name], name)
            if path not in handles:
                handles[path] = safe_open(str(path), framework="np")
            return handles[path].get_tensor(name).astype(np.float32)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read tensor {name!r} from {path}: {e} (truncated or corrupt file?)") from e

    return c, hf_to_params(c, get, set(where), dtype)
