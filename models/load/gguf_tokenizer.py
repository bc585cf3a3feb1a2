"""A GGUF file's tokenizer, without torch.

transformers builds the tokenizer (vocabulary, merges, special tokens, chat template) from a GGUF file's metadata.
Since version 5 it reads that metadata with a module that imports torch at the top, for tensors a tokenizer never
touches, and builds a full model config (with torch) only to pick the tokenizer class. So a machine without torch
could not load a GGUF model's tokenizer. Where that import fails, the metadata comes from the `gguf` package and the
config from the architecture's name, and transformers does the rest as it would with torch: the tests check that
both ways give the same tokenizer.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import types
from pathlib import Path

READER = "transformers.integrations.gguf.reader"  # the module that imports torch


def read_gguf_metadata(gguf_path: str, string_arrays=()) -> tuple[dict, tuple[str, ...]]:
    """transformers' `read_gguf_metadata`, from the `gguf` package: every metadata key with its value, where string
    arrays not named in `string_arrays` are left as their length; and the tensor names."""
    from gguf import GGUFReader, GGUFValueType

    r = GGUFReader(gguf_path)
    metadata = {}
    for key, field in r.fields.items():
        if key.startswith("GGUF."):  # the header (version, counts), not metadata
            continue
        strings = field.types[:2] == [GGUFValueType.ARRAY, GGUFValueType.STRING]
        metadata[key] = len(field.data) if strings and key not in string_arrays else field.contents()
    if "general.architecture" not in metadata:
        raise ValueError(f"{gguf_path} has no `general.architecture` in its metadata.")
    return metadata, tuple(t.name for t in r.tensors)


@contextlib.contextmanager
def torch_free_reader(architecture: str):
    """While the block runs, transformers reads GGUF metadata with `read_gguf_metadata`, and builds the config it
    picks a tokenizer class from out of the architecture alone (its full GGUF config reader needs torch)."""
    from transformers.integrations.gguf import gguf_config_mapping

    saved = sys.modules.get(READER)
    reader = types.ModuleType(READER, "transformers' GGUF metadata reader, from the gguf package")
    reader.read_gguf_metadata = read_gguf_metadata
    sys.modules[READER] = reader
    archs = gguf_config_mapping.GGUF_CONFIG_ARCHS
    added = architecture not in archs
    if added:
        archs[architecture] = lambda metadata, tensor_names: {"model_type": architecture}
    try:
        yield
    finally:
        if added:
            del archs[architecture]
        if saved is None:
            del sys.modules[READER]
        else:
            sys.modules[READER] = saved


def needs_torch_free_reader() -> bool:
    """True where transformers' own GGUF reader cannot be imported for want of torch."""
    try:
        importlib.import_module(READER)
    except ModuleNotFoundError as e:
        return e.name == "torch"  # else an older transformers without that module, which reads GGUF itself
    return False


def load(path: Path, torch_free: bool | None = None):
    """The transformers tokenizer of a GGUF file. `torch_free`: use the `gguf` package's reader (None: only where
    transformers' reader needs torch that is not installed)."""
    from transformers import AutoTokenizer

    if torch_free is None:
        torch_free = needs_torch_free_reader()
    if not torch_free:
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    with torch_free_reader(read_gguf_metadata(str(path))[0]["general.architecture"]):
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
