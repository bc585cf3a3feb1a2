"""Sharding on a (data, model) mesh: the table, its replicate fallback, and parity with one device.

The mesh tests need 8 host devices, which XLA only creates if told before JAX starts: they run in one
subprocess (tests/sharding_check.py) whose JSON result every test here reads.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
from jax.sharding import AbstractMesh, AxisType
from jax.sharding import PartitionSpec as P

from adasd_jax import models
from adasd_jax import cli, sharding

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ar", "sd:K=2", "dynamic:k_max=2", "adaedl:k_max=2", "fsd:K=2", "adasd:k_max=2")


def run_check(tmp_path, *args) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "sharding_check.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def check(tmp_path_factory, hf_pair, smollm2_gguf):
    tmp = tmp_path_factory.mktemp("sharding")
    return run_check(tmp, "--hf", str(hf_pair[0]), str(hf_pair[1]), "--tmp", str(tmp / "orbax"), "--gguf",
                     str(smollm2_gguf))


# ---------------------------------------------------------------- the table, without devices

def abstract(data: int, model: int) -> sharding.Layout:
    return sharding.Layout(AbstractMesh((data, model), ("data", "model"), axis_types=(AxisType.Auto,) * 2))


def test_default_pair_on_model_4_replicates_kv_heads():
    """Qwen2.5-Coder-1.5B: 12 query heads shard on model=4; its 2 KV heads do not divide and replicate."""
    c = models.Config(model_type="qwen2", vocab_size=151936, hidden_size=1536, num_layers=1, num_heads=12,
                      num_kv_heads=2, head_dim=128, intermediate_size=8960, qkv_bias=True)
    lay = abstract(2, 4)
    counts = sharding.head_counts(models.Decoder(c))
    specs = {k: lay.spec(s.axes, s.shape, counts) for k, s in models.param_specs(c)["layers"][0].items()}
    assert specs["wq"] == P("model", None) and specs["bq"] == P("model") and specs["wo"] == P(None, "model")
    assert specs["wk"] == specs["wv"] == P(None, None) and specs["bk"] == P(None)
    assert specs["w_gate"] == P("model", None) and specs["w_down"] == P(None, "model")
    assert specs["attn_norm"] == P(None)
    kv = lay.spec(models.cache_axes().k[0], (4, 64, 2, 128))
    assert kv == P("data", None, None, None)
    assert lay.spec(("batch",), (3,)) == P(None)  # 3 rows on data=2: replicated
    assert abstract(1, 2).spec(models.cache_axes().k[0], (1, 64, 2, 128)) == P(None, None, "model", None)
    # heads split whole: 12 heads * 128 = 1536 divides by 8, 12 heads do not
    assert abstract(1, 8).spec(("q_heads", "embed"), (1536, 1536), {"q_heads": 12}) == P(None, None)


def test_replicated_draft_keeps_only_the_batch_axis():
    lay = abstract(2, 4)
    assert lay.draft.spec(("batch", "seq", "kv_heads", "head_dim"), (4, 8, 4, 8)) == P("data", None, None, None)
    assert lay.draft.spec(("vocab", "embed"), (96, 32)) == P(None, None)
    sharded = sharding.Layout(lay.mesh, replicate_draft=False).draft
    assert sharded.spec(("vocab", "embed"), (96, 32)) == P("model", None)


def test_a_mesh_axis_shards_one_axis_per_array():
    """Rules may map two axes of one array to the same mesh axis (here embed too): the first takes it, the other
    replicates, rather than an invalid PartitionSpec."""
    lay = sharding.Layout(abstract(1, 4).mesh, rules=dict(sharding.RULES, embed="model"))
    assert lay.spec(("q_heads", "embed"), (512, 64), {"q_heads": 8}) == P("model", None)
    assert lay.spec(("embed", "ffn"), (64, 128)) == P("model", None)


def test_a_rule_may_name_two_mesh_axes_and_falls_back_to_its_leading_ones():
    """ffn=model+data shards the MLP 8 ways on a 2x4 mesh; 12 query heads do not divide by 8 and keep model=4;
    where the array's batch already holds `data`, the rule keeps `model` alone."""
    rules = sharding.parse_rules(["2d", "kv_heads=model+data"])
    assert rules == sharding.parse_rules(["ffn=model+data", "q_heads=model+data", "vocab=model+data",
                                          "kv_heads=model+data"])
    assert rules["ffn"] == ("model", "data") and rules["batch"] == "data" and rules["embed"] is None
    lay = sharding.Layout(abstract(2, 4).mesh, rules=rules)
    assert lay.spec(("ffn", "embed"), (8960, 1536)) == P(("model", "data"), None)
    assert lay.spec(("q_heads", "embed"), (1536, 1536), {"q_heads": 12}) == P("model", None)
    assert lay.spec(models.cache_axes().k[0], (4, 64, 8, 128)) == P("data", None, "model", None)
    assert lay.spec(("kv_heads", "embed"), (1024, 1536), {"kv_heads": 8}) == P(("model", "data"), None)
    # a mesh axis of size 1 is left out of the spec
    assert sharding.Layout(abstract(1, 4).mesh, rules=rules).spec(("ffn", "embed"), (8960, 64)) == P("model", None)


@pytest.mark.parametrize("item", ["ffn=model+pipe", "experts=model", "ffn", "ffn=", "ffn=model+model"])
def test_bad_sharding_rules_are_named(item):
    with pytest.raises(ValueError, match="bad sharding rule"):
        sharding.parse_rules([item])


def test_unknown_axis_and_mesh_axis_are_named():
    with pytest.raises(KeyError, match="'experts' is not in the sharding table"):
        abstract(2, 4).spec(("experts",), (8,))
    with pytest.raises(ValueError, match=r"mesh axes \['pipe'\]"):
        sharding.Layout(abstract(2, 4).mesh, rules=dict(sharding.RULES, ffn="pipe"))


@pytest.mark.parametrize("spec, devices, want", [
    (None, 8, (1, 8)), ("data=2,model=4", 8, (2, 4)), ("model=4", 8, (2, 4)), ("data=8", 8, (8, 1)),
    ("data=1,model=2", 8, (1, 2))])
def test_parse_mesh(spec, devices, want):
    assert sharding.parse_mesh(spec, devices) == want


@pytest.mark.parametrize("spec, match", [
    ("data=2,model=8", "needs 16 devices, only 8"), ("model=3", "does not divide the 8 devices"),
    ("data=two", "bad mesh item"), ("pipe=2", "bad mesh item"), ("data=0", "bad mesh item")])
def test_parse_mesh_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        sharding.parse_mesh(spec, 8)


def test_cli_rejects_a_mesh_larger_than_the_machine(capsys):
    assert cli.main(["generate", "--target", "x", "--mesh", "data=64,model=64", "hi"]) == 2
    assert "needs 4096 devices" in capsys.readouterr().err


def test_cli_rules_reach_load_pair():
    a = cli._parser().parse_args(["generate", "--mesh", "data=2,model=4", "--shard-draft", "--rule", "2d", "--rule",
                                  "vocab=none", "hi"])
    kw = cli.mesh_kwargs(a)
    assert kw["mesh"] == "data=2,model=4" and kw["replicate_draft"] is False
    assert kw["rules"] == dict(sharding.RULES, ffn=("model", "data"), q_heads=("model", "data"), vocab=None)
    assert cli.mesh_kwargs(cli._parser().parse_args(["generate", "hi"]))["rules"] is None


@pytest.mark.parametrize("devices, args, want", [
    (1, [], None), (8, [], ""), (8, ["--mesh", "none"], None), (1, ["--mesh"], ""),
    (8, ["--mesh", "model=2"], "model=2")])
def test_cli_mesh_defaults_to_every_device_where_there_are_several(monkeypatch, devices, args, want):
    monkeypatch.setattr(jax, "device_count", lambda: devices)
    assert cli.mesh_kwargs(cli._parser().parse_args(["generate", "hi", *args]))["mesh"] == want
    if want == "":
        assert sharding.parse_mesh(want, devices) == (1, devices)  # all on model: tensor parallelism


@pytest.mark.parametrize("args, match", [(["--rule", "ffn=model+data"], "add --mesh"),
                                         (["--mesh", "data=1,model=1", "--rule", "ffn=tp"], "bad sharding rule")])
def test_cli_names_a_bad_sharding_rule(capsys, args, match):
    assert cli.main(["generate", "--target", "x", *args, "hi"]) == 2
    assert match in capsys.readouterr().err


# ---------------------------------------------------------------- on 8 forced host devices

MESHES = {"data=8,model=1": (8, 1), "data=1,model=8": (1, 8), "data=2,model=4": (2, 4), "data=4,model=2": (4, 2)}


def expected_target(data: int, model: int, heads: int = 4, kv_heads: int = 2) -> dict:
    """The table applied by hand to the tiny pair: 4 heads, 2 KV heads, FFN 64, vocab 96 (FFN and vocabulary
    divide by every model axis here, and do for SmolLM2's 1536 and 49152)."""
    m = "model" if model > 1 else None
    heads = m if heads % model == 0 else None
    kv = m if kv_heads % model == 0 else None
    return {"['wq']": [heads, None], "['wo']": [None, heads], "['wk']": [kv, None], "['wv']": [kv, None],
            "['w_gate']": [m, None], "['w_up']": [m, None], "['w_down']": [None, m], "['attn_norm']": [None],
            "['mlp_norm']": [None], "['embed']": [m, None], "['lm_head']": [m, None]}


def expected_2d() -> dict:
    """The 2x4 table with `--rule 2d`: MLP and vocabulary on model+data; 4 query heads keep model=4."""
    both = ["model", "data"]
    return expected_target(2, 4) | {"['w_gate']": [both, None], "['w_up']": [both, None], "['w_down']": [None, both],
                                    "['embed']": [both, None], "['lm_head']": [both, None]}


@pytest.mark.parametrize("mesh", MESHES)
def test_mesh_outputs_equal_one_device(check, mesh):
    got = check["meshes"][mesh]["tokens"]
    assert set(got) == set(METHODS)
    for method, tokens in got.items():
        assert tokens == check["single"][method], (mesh, method)
    assert check["single"]["fsd:K=2"] != check["single"]["ar"]  # a lossy method really differs


def test_buffer_axes_follow_the_table(check):
    """draft_slot, seq and rounds, which the default table leaves whole, put on `model`: prompts, the target's
    cache positions and the trace's rounds shard where their sizes divide by 4 (the per-row buffers of 15 and 2
    slots do not: replicated), and the tokens stay those of one device."""
    d = check["meshes"]["data=2,model=4 draft_slot=model seq=model rounds=model"]
    for method, tokens in d["tokens"].items():
        assert tokens == check["single"][method], method
    st, shape = d["state"], d["state_shapes"]
    assert shape["['prompt']"][1] % 4 == 0 and st["['prompt']"] == ["data", "model"]
    assert shape["['target_cache'].k[0]"][1] % 4 == 0
    # the KV heads' rule finds model taken by the positions
    assert st["['target_cache'].k[0]"] == st["['target_cache'].v[1]"] == ["data", "model", None, None]
    assert st["['draft_cache'].k[0]"] == ["data", None, None, None]  # the draft replicated but for its rows
    assert shape["['out']"][1] % 4 and st["['out']"] == st["['pending']"] == ["data", None]
    assert shape["['trace'].entropy"][0] % 4 == 0
    assert st["['trace'].entropy"] == ["model", "data", None] and st["['trace'].t_v"] == ["model", "data"]


@pytest.mark.parametrize("mesh", MESHES)
def test_parameter_and_cache_shardings_follow_the_table(check, mesh):
    data, model = MESHES[mesh]
    d = check["meshes"][mesh]
    target = expected_target(data, model)
    assert d["target"] == target
    if d["replicate_draft"]:
        assert all(all(a is None for a in spec) for spec in d["draft"].values())
    else:  # sharded like the target
        assert d["draft"] == {k: v for k, v in target.items() if k not in ("['embed']", "['lm_head']")}
    rows = "data" if 4 % data == 0 and data > 1 else None
    kv = "model" if model > 1 and 2 % model == 0 else None
    st = d["state"]
    for i in (0, 1):
        assert st[f"['target_cache'].k[{i}]"] == st[f"['target_cache'].v[{i}]"] == [rows, None, kv, None]
    assert st["['draft_cache'].k[0]"] == [rows, None, None if d["replicate_draft"] else kv, None]
    assert st["['target_cache'].lengths"] == st["['done']"] == st["['draft_len']"] == [rows]
    assert st["['out']"] == [rows, None]
    assert st["['thresholds'].acc_sum"] == st["['thresholds'].rej_n"] == [rows]  # per_row thresholds
    assert st["['key_data']"] == [None]


def test_weights_on_both_mesh_axes_give_the_same_tokens(check):
    """ffn, vocab and q_heads on model+data: the MLP and vocabulary split 8 ways, the 4 query heads keep model=4,
    and the caches keep their rows on data."""
    d, want = check["meshes"]["data=2,model=4 2d"], expected_2d()
    for method, tokens in d["tokens"].items():
        assert tokens == check["single"][method], method
    assert d["target"] == want
    assert d["draft"] == {k: v for k, v in want.items() if k not in ("['embed']", "['lm_head']")}
    assert d["state"]["['target_cache'].k[0]"] == d["state"]["['draft_cache'].k[0]"] == ["data", None, None, None]


def test_no_collective_in_the_decode_loop_moves_a_kv_cache(check):
    """What sits inside the loop is paid every step: only activation-sized all-reduces/all-gathers belong there."""
    for mesh, d in check["meshes"].items():
        for method, c in d["loop_collectives"].items():
            if mesh != "data=8,model=1":  # data parallel alone needs no collective per step
                assert c["count"] > 0, (mesh, method)
            assert c["max_elements"] < c["cache_layer_elements"], (mesh, method, c)


def test_stream_on_a_mesh_equals_one_device(check):
    streamed = check["meshes"]["data=2,model=4"]["stream"]
    assert streamed and streamed == check["single_stream_reference"]


def test_both_draft_placements_are_exercised(check):
    assert {d["replicate_draft"] for d in check["meshes"].values()} == {True, False}


@pytest.mark.parametrize("kind", ["hf", "orbax", "hf 2d", "gguf"])
def test_load_pair_places_parameters_on_the_mesh(check, kind):
    """gguf: the real SmolLM2, whose 9 query and 3 KV heads do not divide model=4 and replicate."""
    d = check["loaded"][kind]
    assert d["equal_values"]
    want = expected_2d() if kind.endswith("2d") else expected_target(2, 4, *((9, 3) if kind == "gguf" else ()))
    want = {k: v for k, v in want.items() if k != "['lm_head']"}
    assert d["target"] == want
    if kind != "gguf":
        assert all(all(a is None for a in spec) for spec in d["draft"].values())


@pytest.mark.parametrize("env, want", [
    ({}, False), ({"ADASD_DISTRIBUTED": "1"}, True), ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, True),
    ({"TPU_WORKER_HOSTNAMES": "w0,w1,w2,w3"}, True), ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
    ({"ADASD_DISTRIBUTED": "0", "JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, False)])
def test_multihost_launch_is_detected_from_the_environment(monkeypatch, env, want):
    for k in ("ADASD_DISTRIBUTED", "JAX_COORDINATOR_ADDRESS", "TPU_WORKER_HOSTNAMES"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert sharding.distributed_requested() is want


def test_draft_vocab_on_a_mesh_is_refused_with_the_fix(tiny_pair):
    """The CLI shards by default where there are several devices: the refusal names how to keep one."""
    from adasd_jax import engine

    pair = engine.shard(tiny_pair, "")  # every device (one here) on model
    with pytest.raises(ValueError, match="--mesh none"):
        engine.generate(pair, [[5, 6, 7]], method="adasd:draft_vocab=32", max_new_tokens=4)
