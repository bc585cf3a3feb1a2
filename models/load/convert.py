"""Hugging Face tensor names -> this project's stacked parameter tree (shared by every loader)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from models.config import Config

# our per-layer name -> (HF name inside model.layers.{i}., how to reshape the (out, in) matrix)
_LAYER = {
    "attn_norm": "input_layernorm.weight",
    "mlp_norm": "post_attention_layernorm.weight",
    "wq": "self_attn.q_proj.weight",
    "wk": "self_attn.k_proj.weight",
    "wv": "self_attn.v_proj.weight",
    "wo": "self_attn.o_proj.weight",
    "bq": "self_attn.q_proj.bias",
    "bk": "self_attn.k_proj.bias",
    "bv": "self_attn.v_proj.bias",
    "q_norm": "self_attn.q_norm.weight",
    "k_norm": "self_attn.k_norm.weight",
    "w_gate": "mlp.gate_proj.weight",
    "w_up": "mlp.up_proj.weight",
    "w_down": "mlp.down_proj.weight",
}


class CheckpointError(ValueError):
    """A checkpoint file that is missing tensors, truncated or inconsistent with its config."""


def _to_ours(name: str, w: np.ndarray, c: Config) -> np.ndarray:
    """Reorient one HF (out, in) tensor into our layout."""
    H, K, hd, D = c.num_heads, c.num_kv_heads, c.head_dim, c.hidden_size
    if name == "wq":
        return w.T.reshape(D, H, hd)
    if name in ("wk", "wv"):
        return w.T.reshape(D, K, hd)
    if name == "wo":
        return w.T.reshape(H, hd, D)
    if name == "bq":
        return w.reshape(H, hd)
    if name in ("bk", "bv"):
        return w.reshape(K, hd)
    if name in ("w_gate", "w_up", "w_down"):
        return w.T
    return w


def hf_to_params(c: Config, get: Callable[[str], np.ndarray], names: set[str], dtype) -> dict:
    """Build our tree from HF-named tensors. `get(name)` returns a numpy (out, in) array."""
    from models.transformer import param_specs  # local: transformer imports nothing from load

    def fetch(name: str) -> np.ndarray:
        if name not in names:
            raise CheckpointError(f"checkpoint is missing tensor {name!r} (incomplete or truncated download?)")
        return get(name)

    specs = param_specs(c)
    layers = {}
    for ours in specs["layers"]:
        per_layer = [_to_ours(ours, fetch(f"model.layers.{i}.{_LAYER[ours]}"), c).astype(dtype)
                     for i in range(c.num_layers)]
        layers[ours] = np.stack(per_layer)
    params = {"embed": fetch("model.embed_tokens.weight").astype(dtype), "layers": layers,
              "final_norm": fetch("model.norm.weight").astype(dtype)}
    if not c.tie_word_embeddings:
        params["lm_head"] = fetch("lm_head.weight").T.astype(dtype)
    return params
