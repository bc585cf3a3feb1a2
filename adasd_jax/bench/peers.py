"""The peer on the same pair: Hugging Face transformers with torch on the CPU.

`hf-ar` is `model.generate` on the target alone; `hf-assisted` adds `assistant_model=draft`
(assisted generation, batch 1 only) with transformers' default draft-length schedule. Prompts are
the engine's own token ids, so both implementations see the same inputs.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

PEERS = ("hf-ar", "hf-assisted")


@dataclasses.dataclass
class HFPair:
    target: Any
    draft: Any | None
    sources: dict[str, str]  # which files torch loaded
    dtype: str
    gguf: str = "dequantize"  # GGUF weights: "dequantize" (dense, like the JAX engine) or "packed"
    draft_layers: int | None = None  # the draft runs its first N layers only, as the engine's `draft_layers=N`


def peer_sources(draft: str | None, target: str | None) -> tuple[str | None, str]:
    """What torch loads: the given models, or for the built-in pair the GGUF files its Orbax dirs came from."""
    if draft is None and target is None:
        from adasd_jax import fetch

        models_dir = fetch.cache_dir() / "models"
        paths = [models_dir / a.filename for a in (fetch.DEFAULT_DRAFT, fetch.DEFAULT_TARGET)]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise ValueError(f"hf peers need the default pair's GGUF files, missing: {missing}; run `adasd fetch`")
        return str(paths[0]), str(paths[1])
    return draft, target


GGUF_MODES = ("dequantize", "packed")


def _load(src: str, dtype: str, gguf: str = "dequantize"):
    """A transformers model; GGUF weights unpacked to dense `dtype` (as the JAX engine does) unless `packed`."""
    import torch
    from transformers import AutoModelForCausalLM

    if not hasattr(torch, dtype):
        raise ValueError(f"torch has no dtype {dtype!r}")
    p = Path(src)
    kw = {"dtype": getattr(torch, dtype)}
    if p.is_file() and p.suffix == ".gguf":
        if gguf not in GGUF_MODES:
            raise ValueError(f"GGUF mode must be one of {GGUF_MODES}, got {gguf!r}")
        try:
            from transformers.utils.quantization_config import GgufConfig
        except ImportError:  # older transformers always dequantize
            GgufConfig = None
        if GgufConfig is not None:
            kw["quantization_config"] = GgufConfig(gguf_file=str(p), dequantize=gguf == "dequantize")
        model = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, **kw)
    elif p.is_dir() and not (p / "config.json").is_file():
        raise ValueError(f"{src} is not a Hugging Face directory (no config.json): transformers cannot load an "
                         "`adasd convert` directory; pass the original GGUF file or Hugging Face directory")
    else:
        model = AutoModelForCausalLM.from_pretrained(str(src), **kw)
    return model.eval()


def first_layers(model, n: int):
    """The transformers model cut to its first n decoder layers (final norm and head kept), in place."""
    from adasd_jax.models import check_layers_kept

    layers = model.model.layers
    check_layers_kept(n, len(layers), f"draft_layers={n}")
    model.model.layers = layers[:n]
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):  # per-layer attention kinds, read when the cache is built
        model.config.layer_types = model.config.layer_types[:n]
    return model


def load_peers(draft: str | None, target: str | None, dtype: str, need_draft: bool,
               gguf: str = "dequantize", draft_layers: int | None = None) -> HFPair:
    d, t = peer_sources(draft, target)
    if need_draft and not d:
        raise ValueError("hf-assisted needs a draft model")
    dm = _load(d, dtype, gguf) if need_draft else None
    if dm is not None and draft_layers is not None:
        dm = first_layers(dm, draft_layers)
    return HFPair(target=_load(t, dtype, gguf), draft=dm, sources={"draft": d if need_draft else None, "target": t},
                  dtype=dtype, gguf=gguf, draft_layers=draft_layers if need_draft else None)


def assisted_settings(hf: HFPair) -> dict:
    """The draft-length schedule transformers applies (its defaults: what a user gets)."""
    if hf.draft is None:
        return {}
    from transformers import GenerationConfig

    g = hf.draft.generation_config
    defaults = getattr(GenerationConfig, "_get_default_generation_params", dict)()  # filled in where unset
    keys = ("num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold")
    return {k: getattr(g, k, None) if getattr(g, k, None) is not None else defaults.get(k) for k in keys}


def generate(hf: HFPair, method: str, ids: list[int], max_new_tokens: int, eos_ids: tuple[int, ...],
             temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0) -> tuple[list[int], float]:
    """(new token ids, wall seconds) for one prompt; greedy at temperature 0, else sampled like the engine."""
    import torch

    if method not in PEERS:
        raise ValueError(f"unknown peer {method!r}; choose one of {PEERS}")
    x = torch.tensor([ids], dtype=torch.long)
    kw = {"max_new_tokens": max_new_tokens, "eos_token_id": list(eos_ids), "pad_token_id": eos_ids[0],
          "attention_mask": torch.ones_like(x)}
    if temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_k=top_k or None, top_p=top_p)
        torch.manual_seed(seed)
    else:
        kw.update(do_sample=False, temperature=None, top_k=None, top_p=None)
    if method == "hf-assisted":
        kw["assistant_model"] = hf.draft
    t = time.perf_counter()
    with torch.inference_mode():
        out = hf.target.generate(x, **kw)
    secs = time.perf_counter() - t
    return out[0, len(ids):].tolist(), secs
