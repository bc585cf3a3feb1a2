"""Every bad input is refused before a model loads, in one line that names the problem and the fix; nothing a
person made is destroyed, hidden or left half-written."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import adasd_jax
from adasd_jax import cli, engine, loading, validate
from adasd_jax.policies import Method


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def refused(capsys, *argv) -> str:
    """The one-line error of a refused command; fails if it succeeded, printed a traceback or said more."""
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == "" and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("adasd"), err
    return lines[0]


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: these refusals must come first."""
    from adasd_jax import models

    def load(*a, **kw):
        pytest.fail("a model was loaded before the input was refused")

    monkeypatch.setattr(loading, "load_pair", load)
    monkeypatch.setattr(models, "load", load)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under root (hidden ones included) with its bytes (None: a directory)."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


# ---------------------------------------------------------------- method strings

def test_the_option_table_covers_every_method_switch():
    fields = {f.name: f for f in dataclasses.fields(Method) if f.name != "name"}
    assert set(validate.OPTIONS) == set(fields), "each Method field needs one entry in validate.OPTIONS"
    types = {"bool": "bool", "int": "int", "float": "float"}
    for name, (kind, methods, _) in validate.OPTIONS.items():
        assert types.get(kind, "str") == fields[name].type, name
        assert set(methods) <= set(validate.METHODS)
        if kind in ("bool", "int", "float") or isinstance(kind, tuple):  # the default is itself a valid value
            assert validate.option_value(name, fields[name].default) == fields[name].default


@pytest.mark.parametrize("word,value", [("1", True), ("true", True), ("TRUE", True), ("On", True), ("0", False),
                                        ("false", False), ("OFF", False), ("False", False)])
def test_booleans_take_exactly_six_words_in_any_case(word, value):
    assert Method.parse(f"adasd:js_accept={word}").js_accept is value
    assert Method.parse(f"adasd:propose_declined={word}").propose_declined is value


@pytest.mark.parametrize("spec,message", [
    ("adasd:js_accept=yes", "method option js_accept='yes' is not 0/1, true/false or on/off"),
    ("adasd:propose_declined=y", "method option propose_declined='y' is not 0/1, true/false or on/off"),
    ("adasd:per_row=2", "method option per_row='2' is not 0/1, true/false or on/off"),
    ("ar:K=4", "method option k applies to sd, fsd, not ar (ar takes no options)"),
    ("sd:tau=0.1", "method option tau applies to fsd, not sd (sd takes k, draft_vocab)"),
    ("adasd:K=2", "method option k applies to sd, fsd, not adasd"),
    ("sd:propose_declined=1", "method option propose_declined applies to adasd, adaedl, not sd"),
    ("adasd:k_max=abc", "method option k_max='abc' is not an integer from 1 to 64"),
    ("sd:K=0", "method option k='0' is not an integer from 1 to 64"),
    ("fsd:tau=nan", "method option tau='nan' is not a number from 0.0 to 1.0"),
    ("fsd:tau=1.5", "method option tau='1.5' is not a number from 0.0 to 1.0"),
    ("adasd:stats_on=last", "method option stats_on='last' is not strict or final"),
    ("sd:draft_vocab=-1", "method option draft_vocab='-1' is not an integer >= 0"),
    ("sd:K=4,K=5", "method option k is given twice"),
    ("adasd:speed=9", "unknown method option 'speed' in 'adasd:speed=9': adasd takes k_max, stats_on"),
    ("adasd:per_row", "method option 'per_row' has no value"),
    ("medusa", "unknown method 'medusa'; choose one of ar, sd, dynamic, adaedl, fsd, adasd"),
])
def test_bad_method_strings_name_the_option_and_its_values(spec, message):
    with pytest.raises(validate.InputError) as e:
        Method.parse(spec)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_methods_built_in_python_are_checked_too():
    with pytest.raises(ValueError, match="propose_declined applies to adasd, adaedl, not sd"):
        Method("sd", propose_declined=True)
    with pytest.raises(ValueError, match="per_row='yes' is not 0/1"):
        Method("adasd", per_row="yes")
    with pytest.raises(ValueError, match="k=0 is not an integer from 1 to 64"):
        Method("sd", k=0)
    assert Method("adasd", k_max=2).cap == 2  # k, which adasd does not read, no longer has to fit under k_max
    assert Method.parse("sd:K=32").cap == 32


# ---------------------------------------------------------------- the CLI refuses before loading

@pytest.mark.parametrize("args,message", [
    (["--method", "adasd:js_accept=yes"], "js_accept='yes' is not 0/1, true/false or on/off"),
    (["--method", "ar:K=4"], "method option k applies to sd, fsd, not ar"),
    (["--method", "sd:tau=0.1"], "method option tau applies to fsd, not sd"),
    (["--method", "adasd:k_max=abc"], "method option k_max='abc' is not an integer from 1 to 64"),
    (["--method", "adasd:signal=entropy"], "signal=entropy is read by the cost-aware stop only: add stop=cost"),
    (["--method", "adasd:stop=cost,propose_declined=1"], "stop=cost decides proposing itself"),
    (["--temperature", "nan"], "--temperature must be a finite number >= 0 (0 = greedy), got nan"),
    (["--temperature", "inf"], "--temperature must be a finite number >= 0 (0 = greedy), got inf"),
    (["--temperature", "-1"], "--temperature must be a finite number >= 0"),
    (["--top-p", "0"], "--top-p must be a finite number in (0, 1] (1 = off), got 0.0"),
    (["--top-p", "nan"], "--top-p must be a finite number in (0, 1]"),
    (["--top-k", "-3"], "--top-k must be an integer >= 0, got -3"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be an integer >= 1, got 0"),
    (["--batch-size", "-1"], "--batch-size must be an integer >= 1 (leave it out for all prompts at once), got -1"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1 (leave it out for all prompts at once), got 0"),
    (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    (["--draft-layers", "0"], "--draft-layers must be an integer >= 1"),
])
def test_generate_refuses_bad_arguments_before_loading(capsys, no_model, args, message):
    assert message in refused(capsys, "generate", *args, "hi")


def test_generate_refuses_prompts_that_are_not_utf8(capsys, no_model, monkeypatch):
    arg = os.fsdecode(b"caf\xe9 au lait")  # how Python passes an argument that is not UTF-8
    assert "prompt 0 is not valid UTF-8 text (byte 0xe9 at character 3)" in refused(capsys, "generate", arg)

    class Stdin:
        buffer = __import__("io").BytesIO(b"fine\n\xff\xfe bad\n")

    monkeypatch.setattr(sys, "stdin", Stdin)
    assert "stdin line 2 is not UTF-8 text (byte 0xff at 0)" in refused(capsys, "generate")


@pytest.mark.parametrize("argv,message", [
    (["generate", "--method", "adasd:js_accept=yes", "hi"], "js_accept='yes'"),
    (["generate", "--method", "adasd:signal=entropy", "hi"], "add stop=cost"),
    (["bench", "--methods", "ar,adasd:signal=entropy"], "add stop=cost"),
    (["bench", "--methods", "nope"], "bad --methods item 'nope'"),
    (["bench", "--temperature", "nan"], "--temperature must be a finite number"),
    (["bench", "--seeds", "0", "--temperature", "1"], "--seeds must be an integer >= 1, got 0"),
    (["bench", "--limit", "-1"], "--limit must be an integer >= 0, got -1"),
])
def test_a_bad_method_is_refused_without_importing_jax(tmp_path, argv, message):
    code = (f"import sys, adasd_jax.cli as c\nrc = c.main({argv!r})\n"
            "print(rc, sorted(m for m in ('jax', 'optax', 'flax', 'transformers', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.stdout.strip().splitlines()[-1] == "2 []", out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr and not any(tmp_path.iterdir())


# ---------------------------------------------------------------- the Python API

@pytest.mark.parametrize("prompts,message", [
    (None, "prompts must be given: pass a string, a list of strings, or lists of token ids; got NoneType None"),
    ([None], "prompt 0 is NoneType None: pass a string"),
    (5, "prompts must be given: pass a string, a list of strings, or lists of token ids; got 5"),
    ([], "no prompts: the list is empty"),
    ([b"hi"], "prompt 0 is bytes: decode it to a string first"),
    (b"hi", "the prompt is bytes: decode it to a string first"),
    ([[4, 5], [True, 6]], "prompt 1 is list [True, 6]"),
    (["ok", "caf\udce9"], "prompt 1 is not valid UTF-8 text (byte 0xe9 at character 3)"),
])
def test_generate_api_refuses_bad_prompts(tiny_pair, prompts, message):
    with pytest.raises(validate.InputError) as e:
        adasd_jax.generate(tiny_pair, prompts, method="sd:K=2", max_new_tokens=4)
    assert message in str(e.value)


@pytest.mark.parametrize("kw,message", [
    ({"method": None}, "method must be a string such as 'adasd' or 'sd:K=4' (or a Method), got NoneType None"),
    ({"method": "adasd:js_accept=yes"}, "js_accept='yes' is not 0/1"),
    ({"max_new_tokens": "16"}, "max_new_tokens must be an integer >= 1, got str '16'"),
    ({"max_new_tokens": 2.5}, "max_new_tokens must be an integer >= 1, got 2.5"),
    ({"temperature": float("nan")}, "temperature must be a finite number >= 0 (0 = greedy), got nan"),
    ({"top_p": 1.5}, "top_p must be a finite number in (0, 1] (1 = off), got 1.5"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1 (None: all prompts at once), got 0"),
    ({"seed": "1"}, "seed must be an integer >= 0, got str '1'"),
])
def test_generate_api_refuses_bad_arguments(tiny_pair, kw, message):
    with pytest.raises(validate.InputError) as e:
        adasd_jax.generate(tiny_pair, [[4, 5, 6]], **{"method": "sd:K=2", "max_new_tokens": 4, **kw})
    assert message in str(e.value)


def test_generate_api_still_takes_every_prompt_form(tiny_pair):
    import numpy as np

    one = adasd_jax.generate(tiny_pair, [4, 5, 6], method="ar", max_new_tokens=3)
    assert len(one.tokens) == 1
    many = adasd_jax.generate(tiny_pair, ([4, 5, 6], np.array([4, 5, 6]), (4, 5, 6)), method="ar", max_new_tokens=3)
    assert many.tokens == one.tokens * 3
    with pytest.raises(validate.InputError, match="stream takes one prompt"):
        engine.stream(tiny_pair, [[4, 5]], method="ar")


# ---------------------------------------------------------------- data rows and files

def test_data_rows_are_checked_per_field(tmp_path):
    from adasd_jax.bench import datasets
    from adasd_jax.distill import read_rows

    f = tmp_path / "g.jsonl"
    f.write_text('{"question": "q", "answer": "#### 1"}\n{"question": 5, "answer": "#### 2"}\n')
    with pytest.raises(validate.InputError, match=r"g.jsonl:2: field 'question' is 5, expected a string"):
        datasets.load("gsm8k", f)
    with pytest.raises(ValueError, match=r"g.jsonl:2 has no string `text` field"):
        read_rows(f)
    f.write_text('["q", "a"]\n')
    with pytest.raises(validate.InputError, match=r"g.jsonl:1 is a JSON list, not an object"):
        datasets.load("gsm8k", f)
    m = tmp_path / "mt.jsonl"
    m.write_text('{"question_id": 81, "turns": "not a list"}\n')
    with pytest.raises(validate.InputError, match="field 'turns' is str .*expected a non-empty list of strings"):
        datasets.load("mtbench", m)


def test_bench_refuses_a_bad_data_row_before_loading(capsys, no_model, tmp_path):
    f = tmp_path / "g.jsonl"
    f.write_text('{"question": 5, "answer": "#### 2"}\n')
    err = refused(capsys, "bench", "--data-file", f, "--no-progress", "--out-dir", tmp_path / "out")
    assert "field 'question' is 5, expected a string" in err and not (tmp_path / "out").exists()


def test_a_truncated_gguf_says_so(tmp_path):
    import gguf
    import numpy as np

    from adasd_jax import models

    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("token_embd.weight", np.ones((64, 32), np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    path.write_bytes(path.read_bytes()[:-1000])
    with pytest.raises(models.CheckpointError, match="is truncated or corrupt .*download or copy it again"):
        models.load(path)


# ---------------------------------------------------------------- writers

@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    from conftest import make_hf_model, make_tokenizer

    d = make_hf_model(tmp_path_factory.mktemp("src") / "m", "llama")
    make_tokenizer().save_pretrained(str(d))
    return d


def test_convert_never_destroys_or_hides(capsys, no_model, tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "main.py").write_text("keep")
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "X.gguf").write_bytes(b"GGUF")
    before = tree(tmp_path)
    assert "destination {}/d is a directory that already holds files (sub): pick a new or empty directory, or " \
           "pass --overwrite".format(tmp_path) in refused(capsys, "convert", tmp_path / "X.gguf", tmp_path / "d")
    assert "is an existing file: pick another path, or pass --overwrite" in refused(
        capsys, "convert", tmp_path / "X.gguf", tmp_path / "notes.txt")
    for extra in ([], ["--overwrite"]):
        assert "is the source" in refused(capsys, "convert", tmp_path / "X.gguf", tmp_path / "X.gguf", *extra)
        assert "overlaps the source" in refused(capsys, "convert", tmp_path / "d", tmp_path / "d" / "sub" / "x",
                                                *extra)
    assert "is a file, not a directory" in refused(capsys, "convert", tmp_path / "X.gguf", tmp_path / "notes.txt/x")
    assert tree(tmp_path) == before


def test_convert_overwrite_replaces_in_one_step_and_sweeps_stale_temps(capsys, tiny_hf, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".out.tmp-{dead.pid}"
    (stale / "params").mkdir(parents=True)
    rc, stdout, err = run_cli(capsys, "convert", tiny_hf, out, "--dtype", "float32", "--overwrite")
    assert rc == 0 and "wrote" in stdout, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp, no hidden old copy, stale one swept
    assert not (out / "old.txt").exists() and (out / "adasd_model.json").is_file()
    assert engine.load_pair(target=str(out), draft="", dtype="float32").target.config.num_layers > 0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_convert_leaves_nothing(capsys, tiny_hf, tmp_path, monkeypatch, sig):
    """The signal arrives while Orbax is writing: the write finishes, the temp directory goes, one clean line."""
    from adasd_jax.models.load import orbax_io

    real = orbax_io.manifest

    def interrupted(root):
        os.kill(os.getpid(), sig)
        return real(root)

    monkeypatch.setattr(orbax_io, "manifest", interrupted)
    rc, _, err = run_cli(capsys, "convert", tiny_hf, tmp_path / "out", "--dtype", "float32")
    assert rc == 130 and "interrupted" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_ctrl_c_that_python_swallows_still_stops_convert_before_it_writes(capsys, tiny_hf, tmp_path, monkeypatch):
    """A KeyboardInterrupt raised in a finalizer is printed and dropped by Python (jax's GC callback is one such
    place): convert must still stop before writing, without printing that traceback."""
    import time

    from adasd_jax import models

    real = models.load

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)  # the handler runs here, inside the finalizer

    def load(*a, **kw):
        Finalized()
        return real(*a, **kw)

    monkeypatch.setattr(models, "load", load)
    rc, out, err = run_cli(capsys, "convert", tiny_hf, tmp_path / "out", "--dtype", "float32")
    assert rc == 130 and "interrupted" in err and "Exception ignored" not in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_models_save_refuses_to_replace_unless_asked(tmp_path, tiny_pair):
    from adasd_jax import models

    t = tiny_pair.target
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "a.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="holds files: pick a new or empty directory, or replace it with "
                                              "overwrite=True"):
        models.save(tmp_path / "mine", t.config, t.params)
    assert (tmp_path / "mine" / "a.txt").read_text() == "keep"
    models.save(tmp_path / "mine", t.config, t.params, overwrite=True)
    assert not (tmp_path / "mine" / "a.txt").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["mine"]


def _distill_args(tmp_path, *extra):
    data = tmp_path / "train.jsonl"
    if not data.exists():
        data.write_text('{"question": "q", "answer": "#### 1"}\n')
    return ["distill", "--target", tmp_path / "no-such-target", "--data", data, "--no-progress", *extra]


def test_distill_refuses_outputs_it_did_not_make(capsys, no_model, tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "main.py").write_text("keep")
    (tmp_path / "notes.txt").write_text("notes")
    (tmp_path / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    before = tree(tmp_path)
    assert "--out {}/d is a directory that already holds files".format(tmp_path) in refused(
        capsys, *_distill_args(tmp_path, "--init", "layers:1", "--out", tmp_path / "d"))
    assert "is an existing file" in refused(
        capsys, *_distill_args(tmp_path, "--init", "layers:1", "--out", tmp_path / "notes.txt"))
    assert "overlaps the source" in refused(
        capsys, *_distill_args(tmp_path, "--init", "layers:1", "--out", tmp_path, "--overwrite"))
    (tmp_path / "x.train").mkdir()
    (tmp_path / "x.train" / "mine.txt").write_text("keep")
    assert "x.train exists and was not made by adasd distill" in refused(
        capsys, *_distill_args(tmp_path, "--init", "layers:1", "--out", tmp_path / "x", "--restart"))
    assert (tmp_path / "x.train" / "mine.txt").read_text() == "keep"
    assert tree(tmp_path) == {**before, "x.train": None, "x.train/mine.txt": b"keep"}


def test_distill_refuses_a_bad_init_first_and_a_failed_start_blocks_nothing(capsys, no_model, tmp_path,
                                                                              monkeypatch):
    assert "--init 'layers:x': write layers:N with an integer N >= 1" in refused(
        capsys, *_distill_args(tmp_path, "--init", "layers:x", "--out", tmp_path / "d"))
    assert not (tmp_path / "d.train").exists() and not (tmp_path / "d").exists()
    # a run that stopped before training (here: its target failed to load) leaves settings that do not block another
    from adasd_jax import models

    monkeypatch.setattr(models, "load", lambda *a, **kw: (_ for _ in ()).throw(FileNotFoundError("no target")))
    assert "no target" in refused(capsys, *_distill_args(tmp_path, "--init", "layers:2", "--out", tmp_path / "d"))
    assert "no target" in refused(capsys, *_distill_args(tmp_path, "--init", "layers:1", "--out", tmp_path / "d"))


def test_bench_refuses_an_out_dir_it_would_destroy_before_loading(capsys, no_model, tmp_path):
    data = tmp_path / "g.jsonl"
    data.write_text('{"question": "q", "answer": "#### 1"}\n')
    (tmp_path / "file").write_text("keep")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep")
    before = tree(tmp_path)
    common = ["bench", "--data-file", data, "--no-progress", "--out-dir"]
    assert "--out-dir {}/file is an existing file".format(tmp_path) in refused(capsys, *common, tmp_path / "file")
    assert "holds files (x)" in refused(capsys, *common, tmp_path / "full")
    assert "overlaps the source" in refused(capsys, *common, tmp_path, "--overwrite")
    assert tree(tmp_path) == before
    (tmp_path / "partial").mkdir()  # an interrupted run's own checkpoint is no reason to refuse: --resume reads it
    (tmp_path / "partial" / "results.partial.json").write_text("{}")
    assert "pass --resume to continue it" in refused(capsys, *common, tmp_path / "partial")


def test_bench_overwrite_replaces_the_whole_directory(tiny_pair, tmp_path):
    from adasd_jax.bench import options, runner
    from conftest import make_tokenizer

    data = tmp_path / "g.jsonl"
    data.write_text(json.dumps({"question": "w5 w6", "answer": "#### 1"}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.png").write_bytes(b"old")
    pair = dataclasses.replace(tiny_pair, tokenizer=make_tokenizer(), compiled={}, states={})
    argv = ["--data-file", str(data), "--methods", "ar", "--max-new-tokens", "2", "--no-plots", "--no-progress",
            "--no-step-timing", "--out-dir", str(out)]
    with pytest.raises(validate.InputError, match="holds files"):
        runner.bench(options.parser().parse_args(argv), pair=pair)
    runner.bench(options.parser().parse_args([*argv, "--overwrite"]), pair=pair)
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "results.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.jsonl", "out"]
