"""What a distillation run keeps in DIR.train/ to resume: Orbax checkpoints of the train state, the settings it was
started with (train.json), the packed data (data.npz) and the loss log, each written atomically."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from adasd_jax.distill.losses import TrainState


class Checkpoints:
    """Orbax CheckpointManager over TrainState: atomic step directories, the newest few kept."""

    def __init__(self, directory: Path, every: int, keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        opts = ocp.CheckpointManagerOptions(save_interval_steps=every, max_to_keep=keep,
                                            enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(Path(directory).absolute(), options=opts)

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, like: TrainState) -> TrainState:
        step = self.latest()
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), like)
        return self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract))

    def save(self, step: int, state: TrainState, force: bool = False) -> bool:
        return self.manager.save(step, args=self._ocp.args.StandardSave(state), force=force)

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _read_log(path: Path, upto: int) -> list[dict]:
    if not path.is_file():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= upto]


def settings_key(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def prepare_train_dir(train_dir: Path, settings: dict, restart: bool) -> None:
    """Create DIR.train, or check that it was made by the same command (else resuming would mix two runs)."""
    meta = train_dir / "train.json"
    started = (train_dir / "log.jsonl").is_file() or (train_dir / "checkpoints").is_dir()
    if meta.is_file() and (restart or not started):  # ours; with nothing trained, settings may change freely
        shutil.rmtree(train_dir)
    if meta.is_file():
        old = json.loads(meta.read_text())
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(f"{train_dir} holds a run with other settings (differing: {', '.join(diff)}); "
                             "re-run the same command to resume, or pass --restart to start over")
        return
    train_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(meta, lambda p: p.write_text(json.dumps(settings, indent=1)))


def cached_data(train_dir: Path, make: Callable[[], tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """The packed (tokens, mask, segments) of this run, made once and kept so a resumed run sees the same rows.

    A cache from before document ids were kept is made again (the rows come out the same)."""
    path = train_dir / "data.npz"
    if path.is_file():
        with np.load(path) as z:
            if "segments" in z:
                return z["tokens"], z["mask"], z["segments"]
    tokens, mask, segments = make()

    def write(p: Path):
        with p.open("wb") as f:
            np.savez(f, tokens=tokens, mask=mask, segments=segments)

    _write_atomic(path, write)
    return tokens, mask, segments
