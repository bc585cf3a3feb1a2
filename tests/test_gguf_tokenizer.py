"""Generation needs no torch: a GGUF model's tokenizer without it equals the one transformers builds with it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from adasd_jax.models.load import gguf_tokenizer

TEXTS = ["Hello, world!", "  two leading spaces", "café 123\n\tdef f(x):\n    return x ** 2", "日本語のテキスト", ""]
CHAT = [{"role": "user", "content": "What is 17 * 23?"}]


def test_tokenizer_without_torch_equals_transformers_own(smollm2_gguf):
    """The gguf package's metadata reader and the architecture-only config give transformers' own tokenizer:
    class, token ids, special tokens and chat template; transformers' modules are as they were afterwards."""
    from transformers.integrations.gguf import gguf_config_mapping

    path = Path(smollm2_gguf)
    own = gguf_tokenizer.load(path, torch_free=False)
    archs, reader = dict(gguf_config_mapping.GGUF_CONFIG_ARCHS), sys.modules.get(gguf_tokenizer.READER)
    free = gguf_tokenizer.load(path, torch_free=True)
    assert type(free) is type(own)
    assert free(TEXTS)["input_ids"] == own(TEXTS)["input_ids"]
    assert [free.decode(ids) for ids in own(TEXTS)["input_ids"]] == [own.decode(ids) for ids in own(TEXTS)["input_ids"]]
    assert (free.bos_token, free.eos_token, free.unk_token, free.pad_token) == (
        own.bos_token, own.eos_token, own.unk_token, own.pad_token)
    template = dict(tokenize=False, add_generation_prompt=True)
    assert free.apply_chat_template(CHAT, **template) == own.apply_chat_template(CHAT, **template)
    assert gguf_config_mapping.GGUF_CONFIG_ARCHS == archs and sys.modules.get(gguf_tokenizer.READER) is reader


def test_metadata_reader_leaves_unasked_string_arrays_as_counts(smollm2_gguf):
    metadata, tensors = gguf_tokenizer.read_gguf_metadata(smollm2_gguf, ("tokenizer.ggml.tokens",))
    assert metadata["general.architecture"] == "llama" and "token_embd.weight" in tensors
    assert isinstance(metadata["tokenizer.ggml.tokens"], list) and len(metadata["tokenizer.ggml.tokens"]) == 49152
    assert metadata["tokenizer.ggml.merges"] == len(gguf_tokenizer.read_gguf_metadata(
        smollm2_gguf, ("tokenizer.ggml.merges",))[0]["tokenizer.ggml.merges"])


def test_engine_and_a_gguf_tokenizer_load_where_torch_is_not_installed(smollm2_gguf):
    """A fresh process in which torch cannot be found, as after `pip install -e .`: the CLI and the engine import,
    and the tokenizer loads, without importing torch."""
    code = f"""
import importlib.machinery as m, sys
find = m.PathFinder.find_spec
m.PathFinder.find_spec = lambda name, path=None, target=None: (
    None if name.split(".")[0] == "torch" else find(name, path, target))
import adasd_jax.cli, adasd_jax.engine
from adasd_jax import models
tok = models.load_tokenizer({str(smollm2_gguf)!r})
assert "torch" not in sys.modules, "torch was imported"
print(tok("Hello")["input_ids"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[19556]"
