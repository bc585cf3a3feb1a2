"""The `adasd` command end to end on a hermetic tiny pair written to a temp dir."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from adasd_jax import cli

PROMPTS = ["w5 w6 w7 w8", "w30 w31"]


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def generate_json(capsys, hf_pair, method, *extra, target=None):
    draft, tgt = hf_pair
    rc, out, err = run_cli(capsys, "generate", "--draft", draft, "--target", target or tgt, "--dtype", "float32",
                           "--method", method, "--max-new-tokens", 12, "--json", *extra, *PROMPTS)
    assert rc == 0, err
    return json.loads(out)


@pytest.mark.parametrize("method", ["ar", "sd:K=3", "dynamic", "adaedl", "fsd:tau=0.3", "adasd", "adasd:stop=cost"])
def test_generate_json_each_method(capsys, hf_pair, method):
    res = generate_json(capsys, hf_pair, method)
    rows, summary = res["results"], res["summary"]
    assert [r["prompt"] for r in rows] == PROMPTS
    for r in rows:
        assert {"text", "tokens", "new_tokens", "rounds", "drafted", "accepted", "lossy", "t_g", "t_v"} <= set(r)
        assert r["new_tokens"] == len(r["tokens"]) and 0 < r["new_tokens"] <= 12
        assert r["accepted"] <= r["drafted"]
        assert r["text"].split()[0].startswith("w")  # decoded by the pair's tokenizer
    assert summary["new_tokens"] == sum(r["new_tokens"] for r in rows)
    assert summary["target_calls"] == sum(r["rounds"] + 1 for r in rows)
    assert summary["tokens_per_s"] > 0


def test_lossless_cli_matches_ar(capsys, hf_pair):
    ar = generate_json(capsys, hf_pair, "ar")
    sd = generate_json(capsys, hf_pair, "sd:K=3")
    assert [r["tokens"] for r in sd["results"]] == [r["tokens"] for r in ar["results"]]


def test_convert_then_generate_gives_same_tokens(capsys, hf_pair, tmp_path):
    rc, out, err = run_cli(capsys, "convert", hf_pair[1], tmp_path / "conv", "--dtype", "float32")
    assert rc == 0 and "wrote" in out, err
    rc, out, err = run_cli(capsys, "info", tmp_path / "conv")
    assert rc == 0 and "llama: 4 layers" in out and "tokenizer:" in out and "96 tokens" in out
    direct = generate_json(capsys, hf_pair, "sd:K=3")
    converted = generate_json(capsys, hf_pair, "sd:K=3", target=tmp_path / "conv")
    assert [r["tokens"] for r in converted["results"]] == [r["tokens"] for r in direct["results"]]


def test_draft_layers_make_the_target_its_own_draft(capsys, hf_pair):
    """The tiny target cut to its first 2 layers is the tiny pair's draft: same tokens and acceptance."""
    _, target = hf_pair
    ref = generate_json(capsys, hf_pair, "sd:K=3")
    cut = generate_json(capsys, (target, target), "sd:K=3", "--draft-layers", 2)
    assert cut["draft"] == str(target)
    assert [r["tokens"] for r in cut["results"]] == [r["tokens"] for r in ref["results"]]
    assert [r["accepted"] for r in cut["results"]] == [r["accepted"] for r in ref["results"]]
    rc, _, err = run_cli(capsys, "generate", "--draft", target, "--target", target, "--draft-layers", 9, "hi")
    assert rc == 2 and "draft_layers=9 is out of range" in err and "keep 1 to 4" in err


def test_stream_and_stdin(capsys, hf_pair, monkeypatch):
    import io

    draft, target = hf_pair
    args = ["generate", "--draft", draft, "--target", target, "--dtype", "float32", "--max-new-tokens", 12,
            "--method", "sd:K=3"]
    monkeypatch.setattr(sys, "stdin", io.StringIO("w5 w6 w7 w8\n"))
    rc, plain, err = run_cli(capsys, *args)
    assert rc == 0 and "tok/s" in err and "target calls" in err and "T_G" in err
    rc, streamed, err = run_cli(capsys, *args, "--stream", PROMPTS[0])
    assert rc == 0
    assert streamed.strip() == plain.strip()


def test_errors_a_person_can_act_on(capsys, hf_pair, tmp_path):
    rc, _, err = run_cli(capsys, "generate", "--target", tmp_path / "missing", "w5")
    assert rc == 2 and "does not exist" in err and "Traceback" not in err
    rc, _, err = run_cli(capsys, "generate", "--draft", hf_pair[0], "--target", hf_pair[1], "--method", "nope", "w5")
    assert rc == 2 and "unknown method 'nope'" in err
    import shutil

    from conftest import make_tokenizer

    other = shutil.copytree(hf_pair[0], tmp_path / "other")
    make_tokenizer(vocab=80).save_pretrained(str(other))  # same shapes, another tokenizer
    rc, _, err = run_cli(capsys, "generate", "--draft", other, "--target", hf_pair[1], "--dtype", "float32", "w5")
    assert rc == 2 and "different tokenizers" in err


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "adasd_jax", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for sub in ("generate", "fetch", "convert", "info", "bench", "distill"):
        assert sub in out.stdout
    out = subprocess.run([sys.executable, "-m", "adasd_jax", "distill", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--init" in out.stdout


def test_help_does_not_import_jax():
    """`adasd --help` answers without loading JAX or optax (the package exports load on first use)."""
    code = ("import sys, adasd_jax.cli as c\n"
            "try:\n    c.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('jax', 'optax', 'flax', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr


def test_ctrl_c_exits_cleanly(capsys, monkeypatch):
    from adasd_jax import loading

    def interrupted(**kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(loading, "load_pair", interrupted)
    rc, out, err = run_cli(capsys, "generate", "w5")
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
