"""A GGUF file (llama.cpp): metadata -> Config, tensors dequantized with the `gguf` package."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import Config, ConfigError
from .convert import CheckpointError, hf_to_params

_ARCH = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}

# GGUF per-layer suffix -> HF per-layer name
_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_GLOBAL = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
           "output.weight": "lm_head.weight"}


def hf_name(name: str) -> str | None:
    if name in _GLOBAL:
        return _GLOBAL[name]
    if name.startswith("blk."):
        _, i, suffix = name.split(".", 2)
        if suffix in _LAYER:
            return f"model.layers.{i}.{_LAYER[suffix]}"
    return None


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved -> rotate-half RoPE) for llama GGUFs."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def _reader(path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(str(path))
    except Exception as e:  # GGUFReader raises ValueError/OSError/... on bad bytes
        raise CheckpointError(f"cannot read GGUF {path}: the file is truncated or corrupt ({e}); download or copy "
                              "it again") from e


def _field(r, key: str, default=None):
    f = r.fields.get(key)
    return default if f is None else f.contents()


def config_from_reader(r, path: Path) -> Config:
    arch = _field(r, "general.architecture")
    if arch not in _ARCH:
        raise ConfigError(f"{path}: GGUF architecture {arch!r} is not supported; supported: {', '.join(_ARCH)}")
    names = {t.name for t in r.tensors}
    if "rope_freqs.weight" in names:
        raise ConfigError(f"{path}: GGUF rope_freqs (llama3 rope scaling) is not supported from GGUF; "
                          "load the Hugging Face directory instead")
    if _field(r, f"{arch}.attention.sliding_window") is not None:
        raise ConfigError(f"{path}: sliding-window attention is not supported")
    heads = int(_field(r, f"{arch}.attention.head_count"))
    hidden = int(_field(r, f"{arch}.embedding_length"))
    vocab = _field(r, f"{arch}.vocab_size") or len(r.fields["tokenizer.ggml.tokens"].data)
    eos = _field(r, "tokenizer.ggml.eos_token_id")
    return Config(
        model_type=_ARCH[arch], vocab_size=int(vocab), hidden_size=hidden,
        num_layers=int(_field(r, f"{arch}.block_count")), num_heads=heads,
        num_kv_heads=int(_field(r, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(_field(r, f"{arch}.attention.key_length", hidden // heads)),
        intermediate_size=int(_field(r, f"{arch}.feed_forward_length")),
        rope_theta=float(_field(r, f"{arch}.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field(r, f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        qkv_bias="blk.0.attn_q.bias" in names, qk_norm=arch == "qwen3",
        tie_word_embeddings="output.weight" not in names,
        max_position_embeddings=int(_field(r, f"{arch}.context_length", 32768)),
        bos_token_id=_field(r, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
    )


def load(path: Path, dtype, progress: bool = False) -> tuple[Config, dict]:
    from gguf.quants import dequantize

    r = _reader(path)
    c = config_from_reader(r, path)
    tensors = {hf_name(t.name): t for t in r.tensors if hf_name(t.name)}

    def get(name: str) -> np.ndarray:
        t = tensors[name]
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)])  # GGUF lists dims innermost first
        if c.model_type == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            w = unpermute(w, c.num_heads)
        elif c.model_type == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            w = unpermute(w, c.num_kv_heads)
        return w

    return c, hf_to_params(c, get, set(tensors), dtype, progress)
