"""Symmetric int8 weights with one float32 scale per output channel (row of an [out, in] matrix).

    w ~= values * scale[:, None],  values = round(w / scale) in [-127, 127],  scale = max|w[row]| / 127

Decoding streams every weight once per token, so int8 halves a bf16 step's bytes. Two kernels multiply them:

- "w8a8": each activation row (token) is quantized to int8 with its own scale max|x[row]| / 127, the product runs
  int8 x int8 with int32 accumulation, and the two scales are applied to the int32 result. Integer sums are exact
  and a row's scale depends on that row alone, so a verification of K+1 rows computes exactly what K+1 one-row steps
  compute. Fastest on XLA:CPU (adasd_jax/bench/int8_matvec.py: it fuses no int8 -> bf16 convert into a dot).
- "w8a16": the weights are converted to the activations' dtype inside the product (GPU and TPU fuse the convert
  into the matmul's operand load), the activations stay unquantized.

`KERNEL` picks one (None: by backend, see `kernel()`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

QUANTIZATIONS = ("int8",)
KERNELS = ("w8a8", "w8a16")
KERNEL: str | None = None  # read when tracing; None: w8a8 on CPU, w8a16 elsewhere
GROUP = 0  # w8a8: input channels per activation scale (0: one scale per row); read when tracing
STEP = np.float32(1 / 127)  # scale = max|row| * STEP: a product, so that numpy and XLA round it alike


@struct.dataclass
class QInt8:
    """An [out, in] matrix as int8 `values` and float32 `scale` [out]: a pytree of two arrays, so sharding, Orbax,
    jit and device_put see two ordinary leaves."""

    values: jax.Array  # int8 [out, in]
    scale: jax.Array  # float32 [out]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    @property
    def nbytes(self) -> int:
        return self.values.nbytes + self.scale.nbytes


def is_quantized(x) -> bool:
    return isinstance(x, QInt8)


def parse_quantize(q: str | None) -> str | None:
    """'int8' -> 'int8'; None, '' or 'none' -> None (floating-point weights)."""
    if q in (None, "", "none"):
        return None
    if q not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {q!r}; choose one of {', '.join(QUANTIZATIONS)} or none")
    return q


def kernel() -> str:
    """The int8 product this backend runs: `KERNEL`, else w8a8 on CPU (measured fastest there) and w8a16 on GPU and
    TPU (the weight convert fuses into the matmul there; not yet measured against w8a8 on those backends)."""
    if KERNEL is not None:
        if KERNEL not in KERNELS:
            raise ValueError(f"unknown int8 kernel {KERNEL!r}; choose one of {', '.join(KERNELS)}")
        return KERNEL
    return "w8a8" if jax.default_backend() == "cpu" else "w8a16"


def quantize_np(w: np.ndarray) -> QInt8:
    """Host-side quantization of one [out, in] matrix (loaders call this tensor by tensor, from float32)."""
    w = np.asarray(w, np.float32)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax * STEP, np.float32(1)).astype(np.float32)
    values = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return QInt8(values=values, scale=scale)


def quantize(w: jax.Array) -> QInt8:
    """`quantize_np` in JAX (same rounding: half to even)."""
    wf = w.astype(jnp.float32)
    amax = jnp.max(jnp.abs(wf), axis=1)
    scale = jnp.where(amax > 0, amax * STEP, 1.0)
    values = jnp.clip(jnp.round(wf / scale[:, None]), -127, 127).astype(jnp.int8)
    return QInt8(values=values, scale=scale)


def dequantize(q: QInt8, dtype=jnp.float32) -> jax.Array:
    return (q.values.astype(jnp.float32) * q.scale[:, None]).astype(dtype)


def quantize_rows(x: jax.Array, group: int = 0) -> tuple[jax.Array, jax.Array]:
    """Per-row (per-token) dynamic activation quantization of x [m, in] -> (int8 [m, G, in/G], float32 scale [m, G]),
    one scale per `group` consecutive channels of a row (0: the whole row, G = 1). A scale is max|x| / 127 over its
    own row's group: never pooled across rows, so rows stay independent."""
    m, n = x.shape
    g = group if group and n % group == 0 else n
    xf = x.astype(jnp.float32).reshape(m, n // g, g)
    amax = jnp.max(jnp.abs(xf), axis=-1)
    scale = jnp.where(amax > 0, amax * STEP, 1.0)
    xq = jnp.clip(jnp.round(xf / scale[..., None]), -127, 127).astype(jnp.int8)
    return xq, scale


def matmul_t(w: QInt8, x2: jax.Array, how: str | None = None, group: int | None = None) -> jax.Array:
    """`W @ x2^T` as float32 [out, m] for x2 [m, in]; `how` is a kernel name (None: `kernel()`), `group` the w8a8
    activation group (None: `GROUP`)."""
    how = how or kernel()
    if how == "w8a8":
        xq, xs = quantize_rows(x2, GROUP if group is None else group)
        m, G, g = xq.shape
        if m == 1:  # XLA:CPU's one-row int8 dot is 15x slower than its two-row one (int8_matvec.py)
            xq = jnp.concatenate([xq, xq], 0)
        if G == 1:
            acc = jax.lax.dot_general(w.values, xq[:, 0], (((1,), (1,)), ((), ())),
                                      preferred_element_type=jnp.int32)[:, :m]
            y = acc.astype(jnp.float32) * xs[:, 0][None, :]
        else:  # int32 per group, scaled and summed in float32: [G, out, m]
            wv = w.values.reshape(w.values.shape[0], G, g)
            acc = jax.lax.dot_general(wv, xq, (((2,), (2,)), ((1,), (1,))), preferred_element_type=jnp.int32)
            y = jnp.sum(acc[..., :m].astype(jnp.float32) * xs.T[:, None, :], axis=0)
        return y * w.scale[:, None]
    y = jax.lax.dot_general(w.values.astype(x2.dtype), x2, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    return y * w.scale[:, None]


def take_rows(q: QInt8, ids: jax.Array) -> QInt8:
    """The quantized matrix of rows `ids` (a draft's vocabulary subset of its head)."""
    return QInt8(values=q.values[ids], scale=q.scale[ids])


def gather(q: QInt8, tokens: jax.Array, dtype) -> jax.Array:
    """Embedding rows of `tokens`, gathered as int8 and then scaled (never a float copy of the whole table)."""
    return (q.values[tokens].astype(jnp.float32) * q.scale[tokens][..., None]).astype(dtype)
