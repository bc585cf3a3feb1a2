"""Sharding on a `jax.sharding.Mesh` with axes ("data", "model"): one table, used for everything.

    mesh = make_mesh("data=2,model=4")
    layout = Layout(mesh)                       # RULES, draft replicated
    pair = engine.load_pair(draft, target, mesh=mesh)

`RULES` maps each logical axis name (those of a decoder's `param_specs` and `cache_axes` hooks, see
adasd_jax/protocol.py, and of the loop state below) to a mesh axis, or to several (`RULES_2D`). Parameters, KV
caches, the loop state and the threshold state all take their shardings from it; changing the parallelism is editing
the table (`parse_rules`, `--rule` on the CLI). XLA's SPMD partitioner does the rest: no hand-written collectives.

An axis whose size does not divide by its mesh axis is replicated instead: the divisibility is
checked on the logical count (heads, not heads * head_dim), so the default pair's 2 KV heads leave
the K/V projections and the caches replicated on model=4 while the 12 query heads shard. A rule of
several mesh axes keeps the longest leading run of them that divides (12 heads on model+data = 8: model).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from adasd_jax import protocol

# logical axis -> mesh axis (None: replicated). A size that does not divide is replicated (see above).
RULES: dict[str, str | tuple[str, ...] | None] = {
    "batch": "data",  # prompts: data parallel
    "q_heads": "model",  # tensor parallel: attention heads ...
    "kv_heads": "model",  # ... KV heads (replicated when fewer than the model axis, e.g. 2 on model=4)
    "ffn": "model",  # ... the MLP's hidden units
    "vocab": "model",  # ... embedding rows and logits
    "embed": None,  # the residual stream stays whole on every device
    "head_dim": None,
    "seq": None,
    "rounds": None,  # trace buffers' round axis
    "draft_slot": None,  # fixed-size per-row buffers (proposals, pending, output)
}
MESH_AXES = ("data", "model")
# `--rule 2d`: the MLP, vocabulary and query heads split over both mesh axes. Each device then holds and streams
# 1/(data*model) of those weights instead of 1/model, and the rows' activations move between the data replicas
# instead: the cheaper trade for decoding (memory-bound) a few rows per replica.
RULES_2D = {"ffn": ("model", "data"), "vocab": ("model", "data"), "q_heads": ("model", "data")}


def parse_mesh(spec: str | None, n_devices: int) -> tuple[int, int]:
    """'data=2,model=4' (either may be left out and is inferred) -> (data, model); None: (1, n_devices)."""
    if not spec:
        return 1, n_devices  # decoding one prompt at a time: tensor parallelism is what helps
    sizes: dict[str, int] = {}
    for item in spec.split(","):
        name, eq, val = item.strip().partition("=")
        if not eq or name not in MESH_AXES or not val.strip().isdigit() or int(val) < 1:
            raise ValueError(f"bad mesh item {item!r} in {spec!r}: write data=N,model=M with positive integers")
        sizes[name] = int(val)
    for name, other in (("data", "model"), ("model", "data")):
        if name not in sizes:
            if n_devices % sizes[other]:
                raise ValueError(f"mesh {spec!r}: {other}={sizes[other]} does not divide the {n_devices} devices")
            sizes[name] = n_devices // sizes[other]
    if sizes["data"] * sizes["model"] > n_devices:
        raise ValueError(f"mesh {spec!r} needs {sizes['data'] * sizes['model']} devices, only {n_devices} are "
                         "available (on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before start)")
    return sizes["data"], sizes["model"]


def parse_rules(items: list[str] | None) -> dict[str, str | tuple[str, ...] | None] | None:
    """['ffn=model+data', 'vocab=none'] -> RULES with those logical axes remapped (a+b: sharded on both mesh axes,
    a's shards split again on b; none: replicated; the item '2d': RULES_2D); no items: None, the default table."""
    if not items:
        return None
    rules = dict(RULES)
    for item in items:
        if item == "2d":
            rules.update(RULES_2D)
            continue
        name, eq, val = item.partition("=")
        axes = tuple(a for a in val.split("+") if a)
        if not eq or name not in RULES or not axes or len(set(axes)) < len(axes) or (
                val != "none" and set(axes) - set(MESH_AXES)):
            raise ValueError(f"bad sharding rule {item!r}: write 2d, LOGICAL=MESH[+MESH] or LOGICAL=none, with LOGICAL "
                             f"one of {sorted(RULES)} and MESH one of {list(MESH_AXES)}")
        rules[name] = None if val == "none" else axes[0] if len(axes) == 1 else axes
    return rules


def make_mesh(spec: str | None = None, devices=None) -> Mesh:
    """A ("data", "model") mesh over `devices` (default: all devices of every process)."""
    devices = list(jax.devices() if devices is None else devices)
    data, model = parse_mesh(spec, len(devices))
    # Auto axes: XLA's partitioner propagates the table's shardings through the model code unchanged
    return jax.make_mesh((data, model), MESH_AXES, axis_types=(AxisType.Auto,) * 2, devices=devices[:data * model])


def _rules(rules) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
    return tuple(sorted((k, v if v is None or isinstance(v, str) else tuple(v))
                        for k, v in dict(RULES if rules is None else rules).items()))


def _as_tuple(mesh_axis: str | tuple[str, ...] | None) -> tuple[str, ...]:
    return () if mesh_axis is None else (mesh_axis,) if isinstance(mesh_axis, str) else tuple(mesh_axis)


@dataclasses.dataclass(frozen=True)
class Layout:
    """A mesh and the table: static and hashable, so the jitted loop closes over it."""

    mesh: Mesh
    rules: tuple[tuple[str, str | tuple[str, ...] | None], ...] = _rules(None)
    replicate_draft: bool = True  # the common case: a small draft whole on every device, the target sharded

    def __post_init__(self):
        object.__setattr__(self, "rules", _rules(self.rules))
        unknown = {a for _, v in self.rules for a in _as_tuple(v)} - set(self.mesh.axis_names)
        if unknown:
            raise ValueError(f"sharding rules name mesh axes {sorted(unknown)} that the mesh "
                             f"{dict(self.mesh.shape)} does not have")

    @property
    def draft(self) -> Layout:
        """The draft's layout: without tensor parallelism when replicated (batch stays on `data`)."""
        if not self.replicate_draft:
            return self
        return dataclasses.replace(self, rules=tuple((k, v if k == "batch" else None) for k, v in self.rules))

    def spec(self, axes: tuple[str | None, ...], shape: tuple[int, ...], counts: dict[str, int] | None = None) -> P:
        """PartitionSpec for an array of `shape` with logical `axes`. `counts` gives an axis' logical count
        where a dimension fuses it with another (q_heads * head_dim): divisibility is checked on that."""
        table, counts = dict(self.rules), counts or {}
        out, used = [], set()
        for name, dim in zip(axes, shape, strict=True):
            if name is not None and name not in table:
                raise KeyError(f"logical axis {name!r} is not in the sharding table; add it to RULES")
            mesh_axes = tuple(a for a in _as_tuple(table.get(name) if name else None) if self.mesh.shape[a] > 1)
            # the longest leading run of the rule's mesh axes that divides and is free in this array; none: replicated
            while mesh_axes and (self._fails(mesh_axes, counts.get(name, dim), dim) or used & set(mesh_axes)):
                mesh_axes = mesh_axes[:-1]
            out.append(None if not mesh_axes else mesh_axes[0] if len(mesh_axes) == 1 else mesh_axes)
            used.update(mesh_axes)
        return P(*out)

    def _fails(self, mesh_axes: tuple[str, ...], count: int, dim: int) -> bool:
        n = int(np.prod([self.mesh.shape[a] for a in mesh_axes]))
        return bool(count % n or dim % n)

    def sharding(self, axes, shape, counts=None) -> NamedSharding:
        return NamedSharding(self.mesh, self.spec(axes, shape, counts))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    # ------------------------------------------------------------ parameters and caches

    def params(self, decoder):
        """NamedShardings matching the decoder's parameters (its `param_specs` hook); for the reference decoders, pass
        `lambda c: layout.params(models.Decoder(c))` to `models.load(..., shardings=)`."""
        _need_hooks(decoder, "param_specs")
        counts = head_counts(decoder)
        return jax.tree.map(lambda s: self.sharding(s.axes, s.shape, counts), decoder.param_specs(),
                            is_leaf=lambda x: hasattr(x, "axes") and hasattr(x, "shape"))

    def cache(self, decoder, cache):
        """NamedShardings of a decoder's cache (its `cache_axes` hook), from the cache's own shapes."""
        _need_hooks(decoder, "cache_axes")
        counts = head_counts(decoder)
        return jax.tree.map(lambda axes, x: self.sharding(axes, x.shape, counts), decoder.cache_axes(cache), cache,
                            is_leaf=protocol.is_axes)

    # ------------------------------------------------------------ loop and threshold state

    def batch(self, shape: tuple[int, ...], at: int = 0, rest: str = "draft_slot") -> NamedSharding:
        """A per-row array of `shape`: "batch" at `at`, "rounds" before it (traces), `rest` after it (fixed-size
        per-row buffers; "seq" for prompts)."""
        return self.sharding(tuple("batch" if i == at else "rounds" if i < at else rest for i in range(len(shape))),
                             shape)

    def method_state(self, s):
        """MethodState: every field is per row [B] (with trailing bins [B,N]) except pooled thresholds (replicated)."""
        pooled = s.thresholds.acc_n.ndim == 0
        rows = jax.tree.map(lambda x: self.batch(x.shape), s)
        return rows.replace(thresholds=jax.tree.map(lambda x: self.replicated, s.thresholds)) if pooled else rows

    def loop_state(self, s, target, draft):
        """LoopState field by field: caches and per-row buffers per the table, key and step replicated."""
        row = lambda x: self.batch(x.shape)
        dcache = s.draft_cache
        # without a draft, its slot holds only lengths (protocol.NoCache)
        dshard = jax.tree.map(row, dcache) if draft is None else self.draft.cache(draft, dcache)
        trace = None if s.trace is None else jax.tree.map(lambda x: self.batch(x.shape, at=1), s.trace)
        return type(s)(target_cache=self.cache(target, s.target_cache), draft_cache=dshard,
                       last=row(s.last), pending=row(s.pending), n_pending=row(s.n_pending), out=row(s.out),
                       done=row(s.done), method=self.method_state(s.method), metrics=jax.tree.map(row, s.metrics),
                       key=self.replicated, step=self.replicated, trace=trace)

    def constrain(self, s, target, draft):
        """Pin a LoopState to its shardings inside jit (the while loop's carry keeps them)."""
        return jax.lax.with_sharding_constraint(s, self.loop_state(s, target, draft))

    def place(self, tree, shardings):
        """Host or single-device values -> global arrays with these shardings (every process passes the
        same values; each builds only its own shards)."""
        def put(x, sh):
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                return jax.random.wrap_key_data(put(jax.random.key_data(x), sh), impl=jax.random.key_impl(x))
            a = np.asarray(x)
            return jax.make_array_from_callback(a.shape, sh, lambda idx: a[idx])
        return jax.tree.map(put, tree, shardings)


def head_counts(decoder) -> dict[str, int]:
    """The logical counts of fused axes (heads are split whole: [heads * head_dim] divides by the head count)."""
    return decoder.axis_counts() if protocol.has_hook(decoder, "axis_counts") else {}


def _need_hooks(decoder, *names: str) -> None:
    missing = [n for n in names if not protocol.has_hook(decoder, n)]
    if missing:
        raise ValueError(f"{type(decoder).__name__} has no {', '.join(missing)} hook (adasd_jax.protocol), so it "
                         "cannot be sharded on a mesh: add the hooks, or run it on one device (mesh=None)")


def distributed_requested() -> bool:
    """Multi-host launch: ADASD_DISTRIBUTED=1 (tpu_scripts/ set it), an explicit JAX coordinator, or a multi-worker
    GKE TPU slice. A GCE TPU VM's ssh shell names no other worker: its slice is found by `initialize()` itself."""
    flag = os.environ.get("ADASD_DISTRIBUTED", "").lower()
    if flag in ("0", "false", "no"):
        return False
    if flag in ("1", "true", "yes") or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        return True
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def init_distributed() -> bool:
    """Call `jax.distributed.initialize()` once when launched on several hosts; True if it did. Where no cluster
    manager says how many processes there are (a hand launch), ADASD_NUM_PROCESSES and ADASD_PROCESS_ID do."""
    if not distributed_requested():
        return False
    if not jax.distributed.is_initialized():
        env = {k: int(os.environ[f"ADASD_{k.upper()}"]) for k in ("num_processes", "process_id")
               if os.environ.get(f"ADASD_{k.upper()}")}
        jax.distributed.initialize(**env)
    return True


def is_main_process() -> bool:
    return jax.process_index() == 0


def from_main_process(text: str | None) -> str | None:
    """Process 0's `text` on every process: a file that only process 0 reads or writes (its disk is not the
    others'), so that every process takes the same branch. One process: `text` as it is."""
    if jax.process_count() == 1:
        return text
    from jax.experimental import multihost_utils

    raw = np.frombuffer(b"" if text is None else text.encode(), np.uint8)
    n = int(multihost_utils.broadcast_one_to_all(np.int32(-1 if text is None else raw.size)))
    if n <= 0:
        return None if n < 0 else ""
    raw = raw if jax.process_index() == 0 else np.zeros(n, np.uint8)
    return np.asarray(multihost_utils.broadcast_one_to_all(raw)).tobytes().decode()
