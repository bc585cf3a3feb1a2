"""This project's converted format: config.json + Orbax parameter checkpoint + tokenizer files.

Written to a temporary sibling directory and renamed into place, so a crash never leaves a
half-written model behind; reloads in seconds instead of re-dequantizing a GGUF. The marker lists every
file with its size and sha256, so a cache damaged later is detected (`damage`) and can be rebuilt.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from ..config import Config
from .convert import CheckpointError

MARKER = "adasd_model.json"  # config + format version; its presence identifies the format
FORMAT_VERSION = 2  # 2: per-layer parameter trees, [out, in] matrices


def is_orbax_dir(path: Path) -> bool:
    return (path / MARKER).is_file()


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def manifest(root: Path) -> dict[str, list]:
    """relative path -> [size, sha256] of every file under `root` but the marker."""
    return {f.relative_to(root).as_posix(): [f.stat().st_size, _sha256(f)]
            for f in sorted(root.rglob("*")) if f.is_file() and f.name != MARKER}


def damage(path: Path, sha256: Callable[[Path], str] = _sha256) -> str | None:
    """None if `path` is a complete conversion of this version, else what is wrong with it: the marker, then
    each file it lists. `sha256` may be a hasher that trusts a stamp of a file unchanged (size, mtime) since its
    last check."""
    try:
        meta = json.loads((path / MARKER).read_text())
    except FileNotFoundError:
        return f"{MARKER} is missing"
    except (OSError, json.JSONDecodeError) as e:
        return f"{MARKER} is unreadable ({e})"
    if meta.get("format_version") != FORMAT_VERSION:
        return f"format_version is {meta.get('format_version')}, this version reads {FORMAT_VERSION}"
    if not meta.get("files"):
        return f"{MARKER} lists no files (converted before checksums were recorded)"
    return _files_damage(path, meta["files"], sha256)


def _files_damage(path: Path, files: dict[str, list], sha256: Callable[[Path], str]) -> str | None:
    """The first of the marker's `files` that is missing or differs in size or sha256, said in words."""
    for rel, (size, digest) in files.items():
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != size:
            return f"{rel} has {f.stat().st_size} bytes, {MARKER} says {size}"
        if sha256(f) != digest:
            return f"{rel} fails its sha256 check"
    return None


def save(path: Path, c: Config, params, tokenizer=None, source: str | None = None, overwrite: bool = False) -> Path:
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not overwrite and (path.is_file() or path.is_symlink() or path.is_dir() and any(path.iterdir())):
        kind = "a directory that holds files" if path.is_dir() else "an existing file"
        raise FileExistsError(f"{path} is {kind}: pick a new or empty directory, or replace it with overwrite=True "
                              "(adasd: --overwrite)")
    sweep(path)
    tmp = temp_sibling(path)
    try:
        with uninterrupted() as interrupted:
            tmp.mkdir(parents=True)
            with ocp.StandardCheckpointer() as ckpt:
                ckpt.save(tmp / "params", params)
                ckpt.wait_until_finished()
            if tokenizer is not None:
                tokenizer.save_pretrained(str(tmp / "tokenizer"))
            meta = {"format_version": FORMAT_VERSION, "config": c.to_dict(), "source": source,
                    "dtype": str(params["final_norm"].dtype), "files": manifest(tmp)}
            (tmp / MARKER).write_text(json.dumps(meta, indent=1))
            if interrupted:
                raise KeyboardInterrupt
            publish(tmp, path)
    except BaseException:
        remove(tmp)
        raise
    return path


# ---------------------------------------------------------------- writing without destroying

_STALE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def temp_sibling(path: Path, kind: str = "tmp") -> Path:
    """Where a write to `path` happens before it is renamed into place: `.NAME.tmp-PID` beside it."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(path: Path) -> None:
    """Remove the `.NAME.tmp-PID` / `.NAME.old-PID` entries beside `path` whose process is gone (a killed write)."""
    if not path.parent.is_dir():
        return
    for p in path.parent.iterdir():
        m = _STALE.match(p.name)
        if m and m["name"] == path.name and int(m["pid"]) != os.getpid() and not _alive(int(m["pid"])):
            remove(p)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def publish(tmp: Path, path: Path) -> None:
    """Put the finished `tmp` at `path`. What was there is replaced in one step (swapped out, never deleted first),
    then removed; where the system cannot swap, it is renamed aside for the instant between two renames."""
    if not os.path.lexists(path):
        os.replace(tmp, path)
    elif _exchange(tmp, path):
        remove(tmp)  # now the old content
    else:
        old = temp_sibling(path, "old")
        os.replace(path, old)
        os.replace(tmp, path)
        remove(old)


@contextlib.contextmanager
def uninterrupted():
    """Hold SIGINT and SIGTERM until the block ends (Orbax writes from threads that an interrupt would leave
    writing into a directory being removed); yields a list that is non-empty once a signal came."""
    if threading.current_thread() is not threading.main_thread():
        yield []
        return
    got: list[int] = []
    held = {s: signal.signal(s, lambda n, _: got.append(n)) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield got
    finally:
        for s, handler in held.items():
            signal.signal(s, handler)


def load_config(path: Path) -> tuple[Config, dict]:
    try:
        meta = json.loads((path / MARKER).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / MARKER} is corrupt: {e}") from e
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {meta.get('format_version')}, expected {FORMAT_VERSION}; "
                              "convert the model again with `adasd convert`")
    return Config.from_dict(meta["config"]), meta


def load(path: Path, dtype=None, shardings=None, sha256: Callable[[Path], str] | None = None) -> tuple[Config, dict]:
    """Restore parameters; with `dtype` they are cast on restore, with `shardings` (a tree, or a function of
    the config returning one) placed directly; int8 matrices keep their int8 values and float32 scales. Every file is first checked against the marker's sha256 (Orbax
    itself restores a flipped bit silently); `sha256` may be a stamped hasher that skips unchanged files."""
    import orbax.checkpoint as ocp
    from ..transformer import is_spec, param_specs

    c, meta = load_config(path)
    problem = _files_damage(path, meta.get("files", {}), sha256 or _sha256)  # none listed: an older conversion
    if problem:
        raise CheckpointError(f"{path} is damaged: {problem}; convert the model again with `adasd convert`")
    if callable(shardings):
        shardings = shardings(c)
    saved_dtype = np.dtype(meta["dtype"]) if meta["dtype"] != "bfloat16" else jax.numpy.bfloat16
    target_dtype = dtype or saved_dtype
    specs = param_specs(c)
    dtype_of = lambda s: np.dtype(s.dtype) if s.dtype else target_dtype
    if shardings is None:
        abstract = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dtype_of(s)), specs, is_leaf=is_spec)
    else:
        abstract = jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, dtype_of(s), sharding=sh),
                                specs, shardings, is_leaf=is_spec)
    try:
        with ocp.StandardCheckpointer() as ckpt:
            params = ckpt.restore(path / "params", abstract)
    except Exception as e:
        raise CheckpointError(f"cannot restore Orbax parameters from {path / 'params'}: {e}") from e
    return c, params
