"""Run by tests/test_int8.py in a subprocess with 4 forced host devices: an int8 pair sharded against one device.
Prints one JSON object on its last line: {"single": {method: tokens}, "meshes": {mesh: {method: tokens}},
"specs": {name: PartitionSpec}, "loaded_equal": bool, "loaded_dtype": str}.

    python tests/int8_sharding_check.py HF_DIR
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from adasd_jax import models
from adasd_jax import engine
from adasd_jax.engine import Model, Pair

METHODS = ("ar", "sd:K=2")
PROMPTS = [[5, 6, 7, 8, 9], [10, 11, 12]]


def tiny_int8_pair() -> Pair:
    """4 query heads, 2 KV heads, FFN 64, vocab 96: each shards on model=4 or falls back to replication."""
    c = models.Config(model_type="llama", vocab_size=96, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, intermediate_size=64, eos_token_ids=(2,), max_position_embeddings=256)
    pt = models.init_params(c, jax.random.key(0), scale=0.08)
    pt["embed"], pt["lm_head"] = pt["embed"] / 0.08, pt["lm_head"] / 0.08
    c, pt = models.quantize_params(pt, c)
    dc, pd = models.first_layers(c, pt, 1)
    return Pair(target=Model(c, pt, "tiny-target"), draft=Model(dc, pd, "tiny-draft"), tokenizer=None, vocab=96)


def tokens(pair: Pair) -> dict:
    return {m: engine.generate(pair, PROMPTS, method=m, max_new_tokens=10).tokens for m in METHODS}


def main() -> None:
    pair = tiny_int8_pair()
    out = {"single": tokens(pair), "meshes": {}}
    for mesh in ("data=1,model=4", "data=2,model=2"):
        sharded = engine.shard(pair, mesh)
        out["meshes"][mesh] = tokens(sharded)
        if mesh == "data=1,model=4":
            layer = sharded.target.params["layers"][0]
            out["specs"] = {f"{k}.{f}": list(getattr(layer[k], f).sharding.spec) + [None] * (
                getattr(layer[k], f).ndim - len(getattr(layer[k], f).sharding.spec))
                for k in ("w_gate", "w_down") for f in ("values", "scale")}
    one = models.load(sys.argv[1], "float32", tokenizer=False, quantize="int8")[1]
    placed = engine.load_pair(draft="", target=sys.argv[1], quantize="int8", mesh="data=1,model=4").target.params
    out["loaded_equal"] = all(np.array_equal(np.asarray(a), np.asarray(b))
                              for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(placed)))
    out["loaded_dtype"] = str(placed["layers"][0]["wq"].values.dtype)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
