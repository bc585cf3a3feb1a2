"""What a transformer is and how its weights arrive.

    config, params, tokenizer = models.load("path/or/hub-id/or/file.gguf", dtype="bfloat16")  # quantize="int8"
    cache = models.init_cache(config, batch=1, max_len=256, dtype=models.activation_dtype(params))
    logits, cache = models.forward(params, config, tokens, cache)
    decoder = models.Decoder(config)   # the same, as adasd_jax's decoder protocol (adasd_jax/protocol.py)
"""
from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np

from .config import SUPPORTED_MODEL_TYPES, Config, ConfigError
from .decoder import Decoder
from .kv_cache import KVCache, cache_axes, init_cache
from .load.convert import CheckpointError
from . import quant
from .quant import QInt8, parse_quantize
from .transformer import (ParamSpec, activation_dtype, check_params, embed_lookup, forward, init_params, is_spec,
                          param_axes, param_specs, quantize_params, take_rows)

__all__ = ["Config", "ConfigError", "CheckpointError", "Decoder", "KVCache", "ParamSpec", "QInt8",
           "SUPPORTED_MODEL_TYPES", "activation_dtype", "cache_axes", "check_layers_kept", "check_params",
           "embed_lookup", "first_layers", "forward", "init_cache", "init_params", "is_spec", "load", "load_tokenizer",
           "param_axes", "param_specs", "parse_dtype", "parse_quantize", "quantize_params", "save", "source_kind",
           "take_rows"]

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def parse_dtype(dtype) -> jnp.dtype:
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
        return jnp.dtype(DTYPES[dtype])
    d = jnp.dtype(dtype)
    if d.name not in DTYPES:
        raise ValueError(f"unsupported dtype {d.name!r}; choose one of {', '.join(DTYPES)}")
    return d


def _numpy_dtype(d):
    return ml_dtypes.bfloat16 if d == jnp.bfloat16 else np.dtype(d.name)


def source_kind(source: str | Path) -> str:
    """'gguf' | 'orbax' | 'hf' | 'hub'; raises FileNotFoundError naming what was looked for."""
    from .load import hub, orbax_io

    p = Path(source).expanduser()
    if p.is_file():
        if p.suffix == ".gguf":
            return "gguf"
        raise FileNotFoundError(f"{p} is a file but not a .gguf; pass a .gguf file, a Hugging Face model directory, "
                                "a directory written by `adasd convert`, or a hub id")
    if p.is_dir():
        if orbax_io.is_orbax_dir(p):
            return "orbax"
        if (p / "config.json").is_file():
            return "hf"
        raise FileNotFoundError(f"{p} is a directory without config.json (Hugging Face) or "
                                f"{orbax_io.MARKER} (adasd convert): not a model directory")
    if hub.looks_like_hub_id(str(source)):
        return "hub"
    raise FileNotFoundError(f"model {str(source)!r} does not exist: pass a .gguf file, a Hugging Face model "
                            "directory, a directory written by `adasd convert`, or a hub id such as Qwen/Qwen2.5-0.5B")


def load_tokenizer(source: str | Path, kind: str | None = None):
    """The transformers tokenizer (with chat template) for a model source, or None if it has none."""
    from transformers import AutoTokenizer

    from .load import gguf_tokenizer

    p = Path(source).expanduser()
    kind = kind or source_kind(source)
    if kind == "gguf":
        return gguf_tokenizer.load(p)  # without torch too
    directory = p / "tokenizer" if kind == "orbax" else p
    if not any(directory.glob("tokenizer*")):
        return None
    return AutoTokenizer.from_pretrained(str(directory))


def _merge_generation_eos(c: Config, directory: Path) -> Config:
    """Instruct models list their stop tokens in generation_config.json; honour them all."""
    gen = directory / "generation_config.json"
    if not gen.is_file():
        return c
    eos = json.loads(gen.read_text()).get("eos_token_id")
    extra = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
    return dataclasses.replace(c, eos_token_ids=tuple(dict.fromkeys(c.eos_token_ids + tuple(map(int, extra)))))


def load(source: str | Path, dtype="float32", tokenizer: bool = True, shardings=None, progress: bool = False,
         sha256=None, quantize: str | None = None):
    """Load a model from a GGUF file, a Hugging Face directory or hub id, or an `adasd convert` directory.

    Returns (config, params, tokenizer); params are jax arrays of `dtype` (None: as stored; placed with `shardings`, a
    tree matching `param_specs(config)` or a function of the config returning one, when given: each device then
    receives only its own shards); tokenizer is None when asked not to load it or when the source has none.
    `quantize="int8"`: every matrix (projections, embedding, head) becomes int8 with float32 per-output-channel
    scales (`config.quantize` then says so), after smoothing calibrated on a short built-in text (models/smooth.py);
    `dtype` is that of the rest and of the activations. An int8 conversion loads as int8 whatever `quantize` says.
    An `adasd convert` directory is checked against the sha256 of every file first (`sha256`: the hasher).
    """
    from .load import gguf, hub, orbax_io, safetensors

    d = None if dtype is None else parse_dtype(dtype)  # None: as stored (Orbax), else float32
    q = parse_quantize(quantize)
    kind = source_kind(source)
    path = Path(source).expanduser()
    if kind == "hub":
        path, kind = hub.download(str(source)), "hf"
    if kind == "orbax" and not (q and not orbax_io.load_config(path)[0].quantize):
        c, params = orbax_io.load(path, d, shardings, sha256)
    else:
        nd = _numpy_dtype(d if d is not None else jnp.dtype(jnp.float32))
        if kind == "orbax":  # a floating-point conversion asked for int8: quantized on the host, then placed
            c, restored = orbax_io.load(path, None, None, sha256)
            np_params = jax.tree.map(np.asarray, restored)
            nd = nd if d is not None else np_params["final_norm"].dtype  # dtype None: as stored
            del restored
        elif kind == "gguf":
            c, np_params = gguf.load(path, nd, progress)
        else:  # sharded: memory-mapped, so that each shard is read from disk and cast alone
            c, np_params = safetensors.load(path, None if shardings is not None and not q else nd)
            c = _merge_generation_eos(c, path)
        if q:
            c, np_params = _quantized(c, np_params, nd, _tokenizer(path, kind))
        check_params(np_params, c)
        if callable(shardings):
            shardings = shardings(c)
        if shardings is None:
            params = jax.tree.map(jnp.asarray, np_params)
        else:  # a spec's own dtype (int8 values, float32 scales), else `dtype`
            params = jax.tree.map(lambda spec, a, s: jax.make_array_from_callback(
                a.shape, s, lambda idx: np.asarray(a[idx], spec.dtype or nd)), param_specs(c), np_params, shardings,
                is_leaf=is_spec)
    return c, params, _tokenizer(path, kind) if tokenizer else None


def _tokenizer(path: Path, kind: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_tokenizer(path, kind)


def _quantized(c: Config, np_params, dtype, tok):
    """int8 matrices after SmoothQuant smoothing calibrated on models/data/calibration.txt (models/smooth.py); the
    rest cast to `dtype`."""
    from . import smooth

    maxima = smooth.activation_maxima(np_params, c, smooth.calibration_tokens(tok, c.vocab_size))
    layers = list(np_params["layers"])
    for i, m in enumerate(maxima):  # layer by layer: never a float32 copy of the whole model
        one = smooth.smooth_layer(layers[i], m, c)
        layers[i] = {k: quant.quantize_np(v) if v.ndim == 2 else np.asarray(v, dtype) for k, v in one.items()}
    return quantize_params(dict(np_params, layers=layers), c, dtype)  # the embedding and head; the rest as is


def check_layers_kept(n: int, total: int, label: str) -> None:
    """Refuse keeping n of a model's `total` layers unless 1 <= n <= total; `label` names the setting."""
    if not 1 <= n <= total:
        raise ValueError(f"{label} is out of range: the model has {total} layers, so keep 1 to {total}")


def first_layers(config: Config, params, n: int, label: str | None = None):
    """A self-speculative draft: the embedding, the first n layers, the final norm and the head."""
    check_layers_kept(n, config.num_layers, label or f"layers:{n}")
    sub = dict(params, layers=list(params["layers"][:n]))
    return dataclasses.replace(config, num_layers=n), sub


def save(path: str | Path, config: Config, params, tokenizer=None, source: str | None = None,
         overwrite: bool = False) -> Path:
    """Write an Orbax checkpoint that `load` reads back bit-exactly (atomic: temp dir, then rename). An existing
    file or non-empty directory at `path` is refused, or with `overwrite` replaced in one step."""
    from .load import orbax_io

    check_params(params, config)
    return orbax_io.save(Path(path), config, params, tokenizer, source, overwrite)
