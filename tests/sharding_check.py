"""Run by tests/test_sharding.py in a subprocess with 8 forced host devices (XLA_FLAGS must be set before
JAX starts, so it cannot share the test process). Prints one JSON object on its last line:

    {"single": {method: tokens}, "meshes": {mesh: {"tokens": {method: tokens}, "params": {...}, ...}},
     "loaded": {source kind: {...}}}

    python tests/sharding_check.py [--hf DRAFT_DIR TARGET_DIR] [--tmp DIR] [--gguf FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from adasd_jax import models
from adasd_jax import engine, loop, sharding
from adasd_jax.engine import Model, Pair

MESHES = ("data=8,model=1", "data=1,model=8", "data=2,model=4", "data=4,model=2")
# every method, with small draft buffers: each (method, mesh) is one compilation (~5 s of CPU on a mesh)
METHODS = ("ar", "sd:K=2", "dynamic:k_max=2", "adaedl:k_max=2", "fsd:K=2", "adasd:k_max=2")
# mesh -> (methods, draft replicated): every method on every mesh, the draft sharded like the target on
# data=4,model=2. A key is a mesh and, after it, `--rule` items: "MESH 2d" is the table with the MLP, vocabulary
# and query heads on both mesh axes (weights stay put, rows move); BUFFERS puts the per-row buffers, the prompts
# and the caches' positions, and the trace's rounds on `model` too (table entries that the default leaves whole).
BUFFERS = "data=2,model=4 draft_slot=model seq=model rounds=model"
PLAN = {"data=2,model=4": (METHODS, True), "data=8,model=1": (METHODS, True), "data=1,model=8": (METHODS, True),
        "data=4,model=2": (METHODS, False), "data=2,model=4 2d": (("ar", "adasd:k_max=2"), False),
        BUFFERS: (("ar", "adasd:k_max=2"), True)}
LOSSLESS = ("sd:K=2", "dynamic:k_max=2", "adaedl:k_max=2")  # equal to ar on one device (test_engine)
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12], [3, 4, 5, 6, 7, 8, 9, 10], [20, 21]]  # batch 4: data=8 replicates it
MAX_NEW = 12
STREAMED = "adasd:k_max=2"


def tiny_pair() -> Pair:
    """Sizes chosen so that some axes shard and some fall back to replication on each mesh:
    4 query heads (replicated on model=8), 2 KV heads (sharded only on model=2), FFN 64 and vocab 96
    (sharded everywhere), batch 4 (replicated on data=8)."""
    c = models.Config(model_type="llama", vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, intermediate_size=64, eos_token_ids=(2,), max_position_embeddings=256)
    pt = models.init_params(c, jax.random.key(0), scale=0.08)
    pt["embed"], pt["lm_head"] = pt["embed"] / 0.08, pt["lm_head"] / 0.08  # peaked logits, correlated draft
    dc, pd = models.first_layers(c, pt, 1)
    return Pair(target=Model(c, pt, "tiny-target"), draft=Model(dc, pd, "tiny-draft"), tokenizer=None, vocab=96)


def specs(tree) -> dict:
    """keystr -> PartitionSpec padded with None to the array's rank, as a list."""
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(k): list(tuple(a.sharding.spec) + (None,) * (a.ndim - len(a.sharding.spec)))
            for k, a in flat}


def shapes(tree) -> dict:
    return {jax.tree_util.keystr(k): list(a.shape) for k, a in jax.tree_util.tree_flatten_with_path(tree)[0]}


def state_specs(pair: Pair, method: str) -> tuple[dict, dict]:
    """Shardings and shapes of the loop state (caches and trace included) after the jitted prefill on this
    pair's mesh."""
    lc, ids = engine._setup(pair, PROMPTS, method, MAX_NEW, 0.0, 0, 1.0, False, True)
    prompt, lengths, max_len = engine._pad(ids, lc)
    mstate = loop.init_method_state(lc.method, len(ids))
    inputs = pair.layout.place((prompt, lengths, mstate, jax.random.key(0)),
                               engine._input_shardings(pair.layout, prompt.shape, mstate))
    prefill = jax.jit(loop.prefill, static_argnums=(2, 5))
    s = prefill(pair.target.params, pair.draft.params, lc, inputs[0], inputs[1], max_len, inputs[2], inputs[3])
    tree = {"target_cache": s.target_cache, "draft_cache": s.draft_cache, "out": s.out, "done": s.done,
            "pending": s.pending, "thresholds": s.method.thresholds, "draft_len": s.method.draft_len,
            "trace": s.trace, "prompt": inputs[0], "key_data": jax.random.key_data(s.key)}
    return specs(tree), shapes(tree)


def loop_collectives(pair: Pair) -> dict:
    """Collectives inside the compiled loops of every generate call so far, against one layer's KV cache."""
    from adasd_jax.bench.hlo import in_loop_collectives

    out = {}
    for lc, batch, max_len, compiled in engine.generate_programs(pair):
        found = in_loop_collectives(compiled.as_text())
        c = pair.target.config
        out[repr(lc.method)] = {"count": len(found), "max_elements": max((x.elements for x in found), default=0),
                                "cache_layer_elements": batch * max_len * c.num_kv_heads * c.head_dim}
    return out


def run_methods(pair: Pair, methods, trace: bool = False) -> dict:
    return {m: engine.generate(pair, PROMPTS, method=m, max_new_tokens=MAX_NEW, trace=trace).tokens for m in methods}


def placement(key: str) -> tuple[str, dict | None]:
    """'data=2,model=4 2d' -> the mesh and the table its `--rule` items make (None: the default table)."""
    mesh, *rules = key.split()
    return mesh, sharding.parse_rules(rules)


def loaded(draft, target, key: str) -> dict:
    """load_pair with a mesh: shardings and values against the same files loaded on one device (draft None: the
    target alone)."""
    mesh, rules = placement(key)
    draft = draft and str(draft)
    one = engine.load_pair(draft=draft, target=str(target))
    sharded = engine.load_pair(draft=draft, target=str(target), mesh=mesh, rules=rules)
    params = lambda p: (p.target.params, p.draft.params if p.draft else None)
    same = all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(params(one)), jax.tree.leaves(params(sharded)), strict=True))
    return {"equal_values": same, "target": specs(sharded.target.params["layers"][0]) | specs(
        {"embed": sharded.target.params["embed"]}), "draft": draft and specs(sharded.draft.params["layers"][0])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hf", nargs=2, metavar=("DRAFT", "TARGET"), help="tiny HF pair directories to load on a mesh")
    ap.add_argument("--tmp", help="scratch directory for an Orbax round trip")
    ap.add_argument("--gguf", help="a GGUF file (the real SmolLM2) to load on a mesh as a target alone")
    a = ap.parse_args()
    assert jax.device_count() == 8, jax.devices()
    base = tiny_pair()
    result = {"single": run_methods(base, [m for m in METHODS if m not in LOSSLESS]), "meshes": {}, "loaded": {}}
    result["single"] |= {m: result["single"]["ar"] for m in LOSSLESS}
    for mesh, (methods, replicate_draft) in PLAN.items():
        on, rules = placement(mesh)
        pair = engine.shard(base, on, replicate_draft=replicate_draft, rules=rules)
        state, state_shapes = state_specs(pair, "adasd:k_max=2,per_row=1")
        result["meshes"][mesh] = {
            "replicate_draft": replicate_draft,
            "tokens": run_methods(pair, methods, trace=mesh == BUFFERS),
            "target": specs(pair.target.params["layers"][0]) | specs({"embed": pair.target.params["embed"],
                                                                        "lm_head": pair.target.params["lm_head"]}),
            "draft": specs(pair.draft.params["layers"][0]),
            "state": state,
            "state_shapes": state_shapes,
            "loop_collectives": loop_collectives(pair),
        }
        if mesh == "data=2,model=4":  # streaming: the jitted prefill/round functions from a host loop, on a mesh
            st = engine.stream(pair, PROMPTS[0], method=STREAMED, max_new_tokens=MAX_NEW, reset_state=True)
            result["meshes"][mesh]["stream"] = [t for piece in st for t in piece]
            result["single_stream_reference"] = engine.generate(base, [PROMPTS[0]], method=STREAMED,
                                                                max_new_tokens=MAX_NEW, reset_state=True).tokens[0]
    if a.hf:
        result["loaded"]["hf"] = loaded(*a.hf, "data=2,model=4")
        result["loaded"]["hf 2d"] = loaded(*a.hf, "data=2,model=4 2d")
    if a.gguf:
        result["loaded"]["gguf"] = loaded(None, a.gguf, "data=2,model=4")
    if a.tmp:
        tmp = Path(a.tmp)
        for name, model in (("target", base.target), ("draft", base.draft)):
            models.save(tmp / name, model.config, jax.device_get(model.params))
        result["loaded"]["orbax"] = loaded(tmp / "draft", tmp / "target", "data=2,model=4")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
