"""Hugging Face hub ids (online machines): download config, weights and tokenizer, then load the directory."""
from __future__ import annotations

from pathlib import Path

ALLOW = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt", "*.jinja"]


def looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~")) and not source.endswith(".gguf")


def download(repo_id: str, revision: str | None = None) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover - huggingface_hub comes with transformers
        raise RuntimeError("loading hub ids needs huggingface_hub: pip install huggingface_hub") from e
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ALLOW))
    except Exception as e:
        raise FileNotFoundError(
            f"{repo_id!r} is not a local path and could not be fetched from the Hugging Face hub ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}). Offline? Pass a local Hugging Face directory, a .gguf file "
            "or a directory written by `adasd convert` instead.") from e
