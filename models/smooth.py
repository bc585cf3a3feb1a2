"""Per-input-channel smoothing before int8 (SmoothQuant, arXiv 2211.10438): moves activation outliers into weights.

w8a8 quantizes each activation row with one scale, so a few outlier channels (Qwen2.5 has them) flatten every
other channel of that row to a handful of levels. For each product's input channel j, with a = max|x_j| over
calibration text and w = max|W[:, j]|, the factor s_j = a^alpha / w^(1 - alpha) divides the activation and
multiplies the weight column, and the division is folded into what produces the activation, so the float model
computes the same function:
  wq, wk, wv  <- attn_norm          w_gate, w_up <- mlp_norm
  wo          <- wv's rows and bv (one factor per KV head's channel, shared by the query heads of its group)
  w_down      <- w_up's rows
The head and the embedding are left as they are (a tied head is the embedding table).
"""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from . import transformer
from .config import Config
from .kv_cache import init_cache

ALPHA = 0.5
CALIBRATION = Path(__file__).with_name("data") / "calibration.txt"
PRODUCTS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")  # `forward`'s products per layer, in call order


def calibration_tokens(tokenizer, vocab: int, n: int = 512) -> np.ndarray:
    """The tokens of models/data/calibration.txt (prose, arithmetic, code, chat, several languages); without a
    tokenizer, n fixed pseudo-random ids."""
    if tokenizer is None:
        return np.random.default_rng(0).integers(0, vocab, n).astype(np.int32)
    ids = tokenizer(CALIBRATION.read_text(), add_special_tokens=False)["input_ids"]
    return np.asarray([i for i in ids if i < vocab][:n], np.int32)


def activation_maxima(params, c: Config, tokens: np.ndarray) -> list[list[np.ndarray]]:
    """max|x_j| of every product's input over `tokens` (one forward, eager): [layer][product] -> [in]."""
    record: list = []
    p = jax.tree.map(jnp.asarray, params)
    cache = init_cache(c, 1, len(tokens), transformer.activation_dtype(p))
    transformer.RECORD = record
    try:
        transformer.forward(p, c, jnp.asarray(tokens[None]), cache)
    finally:
        transformer.RECORD = None
    maxima = [np.asarray(m, np.float32) for m in record]
    n = len(PRODUCTS)
    return [maxima[i * n:(i + 1) * n] for i in range(c.num_layers)]


def _factors(a: np.ndarray, w: np.ndarray, alpha: float) -> np.ndarray:
    a, w = np.maximum(a, 1e-5), np.maximum(w, 1e-5)
    return (a ** alpha / w ** (1 - alpha)).astype(np.float32)


def smooth_layer(lp: dict, m: list[np.ndarray], c: Config, alpha: float = ALPHA) -> dict:
    """One layer's parameters (host numpy) smoothed as the module docstring says; the products in float32, the
    rest in their own dtype. `m`: this layer's `activation_maxima`."""
    f = {k: np.asarray(v, np.float32) for k, v in lp.items()}
    a = dict(zip(PRODUCTS, m))
    colmax = lambda *names: np.max([np.abs(f[k]).max(axis=0) for k in names], axis=0)
    s = _factors(a["wq"], colmax("wq", "wk", "wv"), alpha)
    f["attn_norm"] = f["attn_norm"] / s
    for k in ("wq", "wk", "wv"):
        f[k] = f[k] * s[None, :]
    s = _factors(a["w_gate"], colmax("w_gate", "w_up"), alpha)
    f["mlp_norm"] = f["mlp_norm"] / s
    f["w_gate"], f["w_up"] = f["w_gate"] * s[None, :], f["w_up"] * s[None, :]
    s = _factors(a["w_down"], colmax("w_down"), alpha)
    f["w_up"], f["w_down"] = f["w_up"] / s[:, None], f["w_down"] * s[None, :]
    # wo's input channel (head h, dim d) is v's channel (h // G, d): one factor per KV channel
    G, hd = c.num_heads // c.num_kv_heads, c.head_dim
    grouped = lambda x: x.reshape(c.num_kv_heads, G, hd).max(axis=1)
    s = _factors(grouped(a["wo"]), grouped(np.abs(f["wo"]).max(axis=0)), alpha)  # [K, hd]
    f["wv"] = f["wv"] / s.reshape(-1)[:, None]
    if "bv" in f:
        f["bv"] = f["bv"] / s.reshape(-1)
    f["wo"] = f["wo"] * np.repeat(s[:, None, :], G, axis=1).reshape(-1)[None, :]
    return {k: v if k in PRODUCTS else v.astype(np.asarray(lp[k]).dtype) for k, v in f.items()}


def smooth(params, c: Config, maxima: list[list[np.ndarray]], alpha: float = ALPHA):
    """The float parameters (host numpy) with every layer smoothed (`smooth_layer`)."""
    return dict(params, layers=[smooth_layer(lp, m, c, alpha) for lp, m in zip(params["layers"], maxima)])
