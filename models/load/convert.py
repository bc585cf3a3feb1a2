"""Hugging Face tensor names -> this project's parameter tree (shared by every loader).

Our matrices keep Hugging Face's [out, in] orientation, so conversion is renaming only."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..config import Config

# our per-layer name -> HF name inside model.layers.{i}.
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


def hf_to_params(c: Config, get: Callable[[str], np.ndarray], names: set[str], dtype, progress: bool = False) -> dict:
    """Build our tree from HF-named tensors. `get(name)` returns a numpy array in HF's layout; `dtype` None keeps
    each as `get` returns it (a memory map stays one)."""
    from ..transformer import param_specs  # local: transformer imports nothing from load

    def fetch(name: str) -> np.ndarray:
        if name not in names:
            raise CheckpointError(f"checkpoint is missing tensor {name!r} (incomplete or truncated download?)")
        return get(name)

    from tqdm import tqdm

    cast = (lambda a: a) if dtype is None else (lambda a: np.array(a, dtype))  # a copy in memory, never a map
    specs = param_specs(c)
    layers = [{ours: cast(fetch(f"model.layers.{i}.{_LAYER[ours]}")) for ours in specs["layers"][i]}
              for i in tqdm(range(c.num_layers), desc="convert layers", unit="layer", disable=not progress)]
    params = {"embed": cast(fetch("model.embed_tokens.weight")), "layers": layers,
              "final_norm": cast(fetch("model.norm.weight"))}
    if not c.tie_word_embeddings:
        params["lm_head"] = cast(fetch("lm_head.weight"))
    return params
