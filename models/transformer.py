"""The shared decoder (llama / mistral / qwen2 / qwen3 by config switches) as pure functions.

`forward(params, config, tokens[B,T], cache) -> (logits[B,T,V], cache)` serves prefill, one-token
decode and multi-token verification alike: row b writes its T new entries at its own position
`cache.lengths[b]` and attends causally to its own valid prefix.

Layout, chosen by measurement on XLA:CPU (see adasd_jax/bench/roofline.py): each layer is its own
parameter tree (slicing a stacked [L, ...] array inside a scan copies the weights every call), and
matrices keep Hugging Face's [out, in] orientation, multiplied as `W @ x^T`, the form whose bf16 and
f32 kernels stream weights fastest. Layers are unrolled: depth costs compile time, not run time.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from . import quant
from .config import Config
from .kv_cache import KVCache
from .quant import QInt8

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """Abstract description of one parameter: shape, logical axes (one name per dimension) and storage dtype."""

    shape: tuple[int, ...]
    axes: tuple[str, ...]
    init: str = "normal"  # normal | ones
    dtype: str | None = None  # None: the model's floating dtype; "int8" / "float32": a quantized matrix's parts


def is_spec(x) -> bool:
    return isinstance(x, ParamSpec)


def _quantized_spec(s: ParamSpec) -> ParamSpec | QInt8:
    """A matrix [out, in] -> int8 values of its shape and axes + float32 scales [out] on its output axis."""
    if len(s.shape) != 2:
        return s
    return QInt8(values=ParamSpec(s.shape, s.axes, dtype="int8"),
                 scale=ParamSpec(s.shape[:1], s.axes[:1], "ones", dtype="float32"))


def layer_specs(c: Config) -> Params:
    """One decoder block's parameters; matrices are [out, in]. A head axis is fused with head_dim."""
    D, H, K, hd, F = c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size
    spec = {
        "attn_norm": ParamSpec((D,), ("embed",), "ones"),
        "wq": ParamSpec((H * hd, D), ("q_heads", "embed")),
        "wk": ParamSpec((K * hd, D), ("kv_heads", "embed")),
        "wv": ParamSpec((K * hd, D), ("kv_heads", "embed")),
        "wo": ParamSpec((D, H * hd), ("embed", "q_heads")),
        "mlp_norm": ParamSpec((D,), ("embed",), "ones"),
        "w_gate": ParamSpec((F, D), ("ffn", "embed")),
        "w_up": ParamSpec((F, D), ("ffn", "embed")),
        "w_down": ParamSpec((D, F), ("embed", "ffn")),
    }
    if c.qkv_bias:
        spec |= {"bq": ParamSpec((H * hd,), ("q_heads",)), "bk": ParamSpec((K * hd,), ("kv_heads",)),
                 "bv": ParamSpec((K * hd,), ("kv_heads",))}
    if c.qk_norm:
        spec |= {"q_norm": ParamSpec((hd,), ("head_dim",), "ones"), "k_norm": ParamSpec((hd,), ("head_dim",), "ones")}
    return spec


def param_specs(c: Config) -> Params:
    """The one description of a parameter tree: drives init, loading checks, casting and sharding."""
    specs = {"embed": ParamSpec((c.vocab_size, c.hidden_size), ("vocab", "embed")),
             "layers": [layer_specs(c) for _ in range(c.num_layers)],
             "final_norm": ParamSpec((c.hidden_size,), ("embed",), "ones")}
    if not c.tie_word_embeddings:
        specs["lm_head"] = ParamSpec((c.vocab_size, c.hidden_size), ("vocab", "embed"))
    if c.quantize:
        specs = jax.tree.map(_quantized_spec, specs, is_leaf=is_spec)
    return specs


def param_axes(c: Config) -> Params:
    return jax.tree.map(lambda s: s.axes, param_specs(c), is_leaf=is_spec)


def activation_dtype(params: Params) -> jnp.dtype:
    """The dtype activations and KV caches run in: the model's floating dtype (its final norm's), also when its
    matrices are int8."""
    return params["final_norm"].dtype


def quantize_params(params: Params, c: Config, dtype=None) -> tuple[Config, Params]:
    """(config, params) with every matrix int8 + per-output-channel scales (host numpy in, numpy out; jax arrays in,
    jax arrays out); the other parameters cast to `dtype` (None: kept). Already quantized matrices stay as they are."""
    import dataclasses

    qc = dataclasses.replace(c, quantize="int8")
    host = isinstance(jax.tree.leaves(params)[0], np.ndarray)

    def one(spec, a):
        if isinstance(spec, QInt8):
            return a if isinstance(a, QInt8) else (quant.quantize_np(a) if host else quant.quantize(a))
        return a if dtype is None else (np.asarray(a, dtype) if host else jnp.asarray(a, dtype))

    return qc, jax.tree.map(one, param_specs(qc), params, is_leaf=lambda x: is_spec(x) or isinstance(x, QInt8))


def init_params(c: Config, key: jax.Array, dtype=jnp.float32, scale: float = 0.02) -> Params:
    """Random parameters of the real shapes (tests, roofline timing); a quantized config's matrices are drawn in
    float32 and quantized."""
    if c.quantize:
        import dataclasses

        return quantize_params(init_params(dataclasses.replace(c, quantize=None), key, jnp.float32, scale), c,
                               dtype)[1]
    specs = param_specs(c)
    leaves, tree = jax.tree.flatten(specs, is_leaf=is_spec)
    keys = jax.random.split(key, len(leaves))

    def make(s: ParamSpec, k):
        if s.init == "ones":
            return jnp.ones(s.shape, dtype)
        return (scale * jax.random.normal(k, s.shape, jnp.float32)).astype(dtype)

    return jax.tree.unflatten(tree, [make(s, k) for s, k in zip(leaves, keys)])


def rms_norm(x: jax.Array, w: jax.Array, eps: float) -> jax.Array:
    """RMSNorm in float32, cast back before the weight (as the reference does)."""
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return w * y.astype(x.dtype)


def rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate-half RoPE. x: [B,T,N,hd]; cos/sin: [B,T,hd]."""
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos[:, :, None, :] + rotated * sin[:, :, None, :]


# XLA:CPU's 16-bit dot runs 17-31 rows slower than 32: a target forward of 17 rows costs 1.9-2.2x a one-row
# step, of 32 rows 1.6-1.8x. Past 32 rows padding loses (33-48 rows: 2.6x, 64: 3.2x). (2-core CPU, 2026-11-28)
# A row tile t (Config.row_tile) pads products of t < m < 2t rows to 2t; None: 16 on CPU, 0 (off) elsewhere.


def padded_rows(m: int, itemsize: int, tile: int | None = None) -> int:
    """The rows a 16-bit product of m rows runs with on this backend: one row runs as two (else XLA:CPU multiplies
    an f32 copy of the whole weight), and a partial second tile as a whole one (`tile`: Config.row_tile)."""
    if itemsize >= 4:
        return m
    if m == 1:
        return 2
    tile = tile if tile is not None else (16 if jax.default_backend() == "cpu" else 0)
    return 2 * tile if tile and tile < m < 2 * tile else m


RECORD: list | None = None  # calibration (models/smooth.py): each product appends its inputs' per-channel max|x|


def linear(x: jax.Array, w: jax.Array | QInt8, row_tile: int | None = None) -> jax.Array:
    """x[..., in] times w[out, in] as `W @ x^T` with float32 accumulation, rows padded by `padded_rows` (`row_tile`:
    Config.row_tile); an int8 w runs `quant.matmul_t` (the backend's int8 kernel)."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    m = x2.shape[0]
    if RECORD is not None:
        RECORD.append(jnp.max(jnp.abs(x2.astype(jnp.float32)), axis=0))
    if isinstance(w, QInt8):
        y = quant.matmul_t(w, x2)
        if m > 1:
            y = jax.lax.optimization_barrier(y)
        return y.T.astype(x.dtype).reshape(*lead, w.shape[0])
    rows = padded_rows(m, x.dtype.itemsize, row_tile)
    if rows > m:
        x2 = jnp.concatenate([x2, jnp.broadcast_to(x2[-1:], (rows - m, x2.shape[1]))], 0)
    y = jax.lax.dot_general(w, x2, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    if m > 1:  # keep XLA from folding the transpose into the dot as the slower `x @ W^T` form
        y = jax.lax.optimization_barrier(y)
    return y[:, :m].T.astype(x.dtype).reshape(*lead, w.shape[0])


def embed_lookup(table: jax.Array | QInt8, tokens: jax.Array, dtype=None) -> jax.Array:
    """table[tokens]. A 16-bit table is gathered through its integer view: XLA:CPU otherwise gathers
    from an f32 copy of the whole table, which a while loop hoists and keeps (0.5-0.9 GB per call). An int8
    table's rows are gathered, then scaled into `dtype` (default float32)."""
    if isinstance(table, QInt8):
        return quant.gather(table, tokens, dtype or jnp.float32)
    if table.dtype.itemsize != 2:
        return table[tokens]
    bits = jax.lax.bitcast_convert_type(table, jnp.uint16)
    return jax.lax.bitcast_convert_type(bits[tokens], table.dtype)


def take_rows(w: jax.Array | QInt8, ids: jax.Array) -> jax.Array | QInt8:
    """The matrix of w's rows `ids` (a draft's vocabulary subset of its head), int8 when w is."""
    return quant.take_rows(w, ids) if isinstance(w, QInt8) else embed_lookup(w, ids)


def _layer(c: Config, x, lp, k_cache, v_cache, pos, cos, sin, mask):
    """One decoder block. x: [B,T,D]; k/v_cache: [B,S,K,hd] for this layer; returns new x and caches."""
    B, T, _ = x.shape
    h = rms_norm(x, lp["attn_norm"], c.rms_norm_eps)
    tile = c.row_tile
    q, k, v = linear(h, lp["wq"], tile), linear(h, lp["wk"], tile), linear(h, lp["wv"], tile)
    if c.qkv_bias:
        q, k, v = q + lp["bq"], k + lp["bk"], v + lp["bv"]
    q = q.reshape(B, T, c.num_heads, c.head_dim)
    k = k.reshape(B, T, c.num_kv_heads, c.head_dim)
    v = v.reshape(B, T, c.num_kv_heads, c.head_dim)
    if c.qk_norm:
        q, k = rms_norm(q, lp["q_norm"], c.rms_norm_eps), rms_norm(k, lp["k_norm"], c.rms_norm_eps)
    q, k = rope(q, cos, sin), rope(k, cos, sin)
    # write the T new entries at each row's own positions; positions past the cache are dropped
    rows = jnp.arange(B)[:, None]
    k_cache = k_cache.at[rows, pos].set(k.astype(k_cache.dtype), mode="drop")
    v_cache = v_cache.at[rows, pos].set(v.astype(v_cache.dtype), mode="drop")
    G = c.num_heads // c.num_kv_heads
    qg = q.reshape(B, T, c.num_kv_heads, G, c.head_dim)
    scores = jnp.einsum("btkgh,bskh->bkgts", qg, k_cache.astype(q.dtype)).astype(jnp.float32)
    scores = scores * (c.head_dim ** -0.5)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    attn = jnp.einsum("bkgts,bskh->btkgh", probs, v_cache.astype(q.dtype)).reshape(B, T, -1)
    x = x + linear(attn, lp["wo"], tile)
    h = rms_norm(x, lp["mlp_norm"], c.rms_norm_eps)
    x = x + linear(jax.nn.silu(linear(h, lp["w_gate"], tile)) * linear(h, lp["w_up"], tile), lp["w_down"], tile)
    return x, k_cache, v_cache


def forward(params: Params, c: Config, tokens: jax.Array, cache: KVCache,
            num_new: jax.Array | None = None, logits_index: jax.Array | None = None,
            segments: jax.Array | None = None, head: jax.Array | None = None):
    """Run T new tokens per row through the decoder.

    tokens: [B,T] int; row b's token t sits at position cache.lengths[b] + t.
    num_new: [B] how far each row's length advances (default T; padding past it is written but
      stays outside the valid prefix, and is overwritten by the next call).
    logits_index: optional [B] index into T; then logits are [B,1,V] at that index only.
    head: optional [N,D] output matrix used instead of the model's own (a draft's vocabulary subset); logits are
      then [B,T,N].
    segments: optional [B,T] document ids of packed training rows (fresh cache of exactly T positions):
      a token attends only to earlier tokens of its own document. RoPE is relative, so positions need
      not restart per document.
    Returns float32 logits [B,T,V] (or [B,1,V]) and the updated cache.
    """
    B, T = tokens.shape
    if T > cache.max_len:
        raise ValueError(f"{T} new tokens are longer than the cache ({cache.max_len} positions): "
                         "allocate a larger cache (max_len) or shorten the prompt")
    dtype = activation_dtype(params)
    pos = cache.lengths[:, None] + jnp.arange(T, dtype=jnp.int32)[None, :]  # [B,T]
    freqs = pos[..., None].astype(jnp.float32) * jnp.asarray(c.inv_freq())  # [B,T,hd/2]
    angles = jnp.concatenate([freqs, freqs], axis=-1)
    cos, sin = jnp.cos(angles).astype(dtype), jnp.sin(angles).astype(dtype)
    mask = jnp.arange(cache.max_len)[None, None, :] <= pos[:, :, None]  # [B,T,S]
    if segments is not None:
        if segments.shape != (B, T) or cache.max_len != T:
            raise ValueError(f"segments {segments.shape} need tokens [B,T] = {(B, T)} and a fresh cache of T "
                             f"positions (this cache has {cache.max_len})")
        mask = mask & (segments[:, :, None] == segments[:, None, :])
    x = embed_lookup(params["embed"], tokens, dtype)
    ks, vs = [], []
    for i, lp in enumerate(params["layers"]):
        x, k_i, v_i = _layer(c, x, lp, cache.k[i], cache.v[i], pos, cos, sin, mask)
        ks.append(k_i)
        vs.append(v_i)
    if logits_index is not None:
        x = jnp.take_along_axis(x, logits_index[:, None, None], axis=1)
    x = rms_norm(x, params["final_norm"], c.rms_norm_eps)
    if head is None:
        head = params["embed"] if c.tie_word_embeddings else params["lm_head"]
    logits = linear(x, head, c.row_tile).astype(jnp.float32)
    advance = jnp.full((B,), T, jnp.int32) if num_new is None else num_new.astype(jnp.int32)
    return logits, KVCache(k=tuple(ks), v=tuple(vs), lengths=cache.lengths + advance)


def cast_params(params: Params, dtype) -> Params:
    """Floating parameters cast to `dtype`; int8 matrices (values and scales) stay as they are."""
    return jax.tree.map(lambda a: a if isinstance(a, QInt8) else jnp.asarray(a, dtype), params,
                        is_leaf=lambda x: isinstance(x, QInt8))


def check_params(params: Params, c: Config) -> None:
    """Shapes must be exactly those the config describes (a loader bug or a truncated file otherwise)."""
    specs = param_specs(c)
    flat_s = dict(jax.tree_util.tree_flatten_with_path(specs, is_leaf=is_spec)[0])
    flat_p = dict(jax.tree_util.tree_flatten_with_path(params)[0])
    missing = set(map(jax.tree_util.keystr, flat_s)) - set(map(jax.tree_util.keystr, flat_p))
    extra = set(map(jax.tree_util.keystr, flat_p)) - set(map(jax.tree_util.keystr, flat_s))
    if missing or extra:
        raise ValueError(f"parameter tree mismatch: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for path, spec in flat_s.items():
        got = tuple(np.shape(flat_p[path]))
        if got != spec.shape:
            raise ValueError(f"parameter {jax.tree_util.keystr(path)} has shape {got}, config expects {spec.shape}")
        if spec.dtype is not None and np.dtype(flat_p[path].dtype) != np.dtype(spec.dtype):
            raise ValueError(f"parameter {jax.tree_util.keystr(path)} is {flat_p[path].dtype}, config expects "
                             f"{spec.dtype}")
