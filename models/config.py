"""One static `Config` for every supported decoder family, from config.json or GGUF metadata."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class ConfigError(ValueError):
    """A checkpoint's configuration that this implementation would not compute faithfully."""


@dataclasses.dataclass(frozen=True)
class Config:
    """Static (hashable) architecture description; closed over by `jit`, never traced."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 10000.0
    # llama3 rope scaling as (factor, low_freq_factor, high_freq_factor, original_max_pos); None = plain RoPE
    rope_llama3: tuple[float, float, float, int] | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False  # qwen2
    qk_norm: bool = False  # qwen3: per-head RMSNorm on q and k before RoPE
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 32768
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    quantize: str | None = None  # "int8": matrices stored as int8 + per-output-channel scales (models/quant.py)
    # 16-bit products of t < m < 2t rows run as 2t rows (transformer.padded_rows); None: 16 on CPU, 0 (off) elsewhere.
    # How the products run, not what the model is: to_dict leaves it out, so a saved model never carries it.
    row_tile: int | None = None

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(f"unsupported model_type {self.model_type!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_attention_heads={self.num_heads} is not a multiple of num_key_value_heads={self.num_kv_heads}")
        if self.quantize not in (None, "int8"):
            raise ConfigError(f"unknown quantize={self.quantize!r}; supported: int8 or none")
        if self.row_tile is not None and self.row_tile < 0:
            raise ConfigError(f"row_tile={self.row_tile} must be >= 0 (0: no padding; None: the backend's default)")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        del d["row_tile"]
        if d["quantize"] is None:  # floating-point conversions keep the marker older versions read
            del d["quantize"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        d = dict(d)
        if d.get("rope_llama3") is not None:
            d["rope_llama3"] = tuple(d["rope_llama3"])
        d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        return cls(**d)

    @property
    def num_params(self) -> int:
        d, f, v, L = self.hidden_size, self.intermediate_size, self.vocab_size, self.num_layers
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        per_layer = d * (q + 2 * kv) + q * d + 3 * d * f + 2 * d
        per_layer += (q + 2 * kv) * self.qkv_bias + 2 * self.head_dim * self.qk_norm
        return L * per_layer + v * d * (1 if self.tie_word_embeddings else 2) + d

    def inv_freq(self) -> np.ndarray:
        """RoPE inverse frequencies [head_dim // 2], float32, as in the transformers reference."""
        dim = self.head_dim
        inv = 1.0 / (self.rope_theta ** (np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim))
        if self.rope_llama3 is None:
            return inv.astype(np.float32)
        factor, low, high, old_ctx = self.rope_llama3
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old_ctx / high) & ~(wavelen > old_ctx / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)


def _eos_tuple(eos) -> tuple[int, ...]:
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))


def from_hf(d: dict[str, Any]) -> Config:
    """Config from a Hugging Face config.json dict; refuses fields it would silently ignore."""
    mt = d.get("model_type")
    if mt not in SUPPORTED_MODEL_TYPES:
        raise ConfigError(f"unsupported model_type {mt!r}; supported: {', '.join(SUPPORTED_MODEL_TYPES)}")
    act = d.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"hidden_act={act!r} is not supported (only 'silu')")
    if d.get("mlp_bias"):
        raise ConfigError("mlp_bias=true is not supported")
    if d.get("pretraining_tp", 1) != 1:
        raise ConfigError("pretraining_tp != 1 is not supported")
    if mt == "mistral" and d.get("sliding_window") is not None:
        raise ConfigError(f"mistral sliding_window={d['sliding_window']} is not supported (only full attention)")
    if mt in ("qwen2", "qwen3") and d.get("use_sliding_window"):
        raise ConfigError(f"{mt} use_sliding_window=true is not supported")
    types = set(d.get("layer_types") or ["full_attention"])
    if types != {"full_attention"}:
        raise ConfigError(f"layer_types {sorted(types)} not supported (only full_attention)")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    theta = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    llama3 = None
    if rope_type == "llama3":
        llama3 = (float(rope["factor"]), float(rope["low_freq_factor"]), float(rope["high_freq_factor"]),
                  int(rope["original_max_position_embeddings"]))
    elif rope_type != "default":
        raise ConfigError(f"rope_type={rope_type!r} is not supported (supported: default, llama3)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError("partial_rotary_factor != 1 is not supported")
    heads = d["num_attention_heads"]
    qkv_bias = mt == "qwen2" or bool(d.get("attention_bias", False))
    return Config(
        model_type=mt, vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], num_layers=d["num_hidden_layers"],
        num_heads=heads, num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // heads, intermediate_size=d["intermediate_size"],
        rope_theta=theta, rope_llama3=llama3, rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)), qkv_bias=qkv_bias,
        qk_norm=mt == "qwen3", tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        max_position_embeddings=int(d.get("max_position_embeddings", 32768)),
        bos_token_id=d.get("bos_token_id"), eos_token_ids=_eos_tuple(d.get("eos_token_id")),
    )
