"""The built-in Qwen2.5-Coder 0.5B -> 1.5B pair (1.6 GB download): run with --runslow."""
import json

import pytest

from adasd_jax import cli

pytestmark = pytest.mark.slow


def test_generate_default_pair_sd_is_target_greedy(capsys):
    """`adasd generate` on the real default pair: sd's text is the target's own greedy continuation."""
    args = ["generate", "--dtype", "float32", "--max-new-tokens", "24", "--json",
            "Write a Python function that adds two numbers."]
    assert cli.main(args + ["--method", "ar"]) == 0
    ar = json.loads(capsys.readouterr().out)
    assert cli.main(args + ["--method", "sd:K=4"]) == 0
    sd = json.loads(capsys.readouterr().out)
    assert sd["results"][0]["tokens"] == ar["results"][0]["tokens"]
    assert cli.main(args + ["--method", "adasd:stop=cost,js_accept=0"]) == 0
    cost = json.loads(capsys.readouterr().out)
    assert cost["results"][0]["tokens"] == ar["results"][0]["tokens"]  # the cost-aware stop, lossless variant
    assert cost["summary"]["cost_source"] == "measured" and cost["summary"]["drafted"] > 0
    assert "def" in ar["results"][0]["text"]
    assert sd["summary"]["tokens_per_call"] > 1.5  # a real draft: most proposals are accepted
