"""Shared fixtures: tiny random Hugging Face checkpoints of each family, and the real SmolLM2 GGUF."""
from __future__ import annotations

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tests compile many small programs: skip LLVM's slow optimisations (HLO-level semantics are unchanged).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import pytest  # noqa: E402


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow (the 1.6 GB default pair)")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: needs the 1.6 GB default pair or a long run; enable with --runslow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _count_lines(path: str) -> int:
    try:
        with open(path) as f:
            return sum(1 for _ in f)
    except OSError:  # not Linux
        return 0


_MAP_LIMIT = int(open("/proc/sys/vm/max_map_count").read()) if os.path.exists("/proc/sys/vm/max_map_count") else 0


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """XLA:CPU maps memory for every compiled program (thousands of maps per loop program) and keeps it while anything
    holds the program: JAX's caches, and the `compiled` dict of every pair a fixture keeps for the session. Over the
    suite that reached the kernel's limit of maps per process (vm.max_map_count, 65,530 by default) and the next
    compile segfaulted: once a test leaves the process past half the limit, drop both."""
    yield
    if _MAP_LIMIT and _count_lines("/proc/self/maps") > _MAP_LIMIT // 2:
        import gc

        import jax

        from adasd_jax.loading import Pair

        for pair in [o for o in gc.get_objects() if isinstance(o, Pair)]:
            pair.compiled.clear()
        jax.clear_caches()
        gc.collect()


TINY = dict(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)

FAMILIES = {
    "llama": dict(model_type="llama", rope_theta=10000.0, tie_word_embeddings=False),
    "llama3-rope": dict(model_type="llama", rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                          "high_freq_factor": 4.0,
                                                          "original_max_position_embeddings": 32}, rope_theta=500000.0),
    "mistral": dict(model_type="mistral", sliding_window=None, rope_theta=10000.0),
    "qwen2": dict(model_type="qwen2", rope_theta=1e6, tie_word_embeddings=False),
    "qwen2-tied": dict(model_type="qwen2", rope_theta=1e6, tie_word_embeddings=True),
    "qwen3": dict(model_type="qwen3", head_dim=24, rope_theta=1e6, tie_word_embeddings=True),
}


def make_hf_model(directory, family: str, seed: int = 0, dtype: str = "float32", **overrides):
    """A random transformers model of `family` saved with save_pretrained; weights scaled so logits are peaked."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = {**TINY, **FAMILIES[family], **overrides}
    model_type = kw.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **kw)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(0.08 * torch.randn_like(p))
    model.to(getattr(torch, dtype)).save_pretrained(str(directory))
    return directory


def gsm8k_file(directory, n: int, first: int, second: int, tail: str = ""):
    """directory/gsm8k.jsonl with n GSM8K-style rows in the tiny tokenizer's words: question i is
    'w{first + i} w{second + i}' + tail, answer i is i. Returns the path."""
    import json

    path = directory / "gsm8k.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"w{first + i} w{second + i}{tail}", "answer": f"w\n#### {i}"})
                              for i in range(n)))
    return path


def flip_a_bit(converted):
    """Flip one bit in the middle of a converted model's largest data file (size kept); return the file."""
    data = max((f for f in (converted / "params").rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 1
    data.write_bytes(bytes(raw))
    return data


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory):
    """family -> directory of a tiny random checkpoint (built once per session)."""
    root = tmp_path_factory.mktemp("hf")
    return {f: make_hf_model(root / f, f) for f in FAMILIES}


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M-Instruct GGUF (98 MB), fetched once into the user cache and hash-checked."""
    from adasd_jax.fetch import SMOLLM2, FetchError, fetch

    try:
        return fetch(SMOLLM2, progress=False)
    except FetchError as e:
        pytest.fail(f"cannot fetch the SmolLM2 GGUF needed by real-weight tests: {e}")


def make_tiny_pair(vocab: int = 96, eos: tuple[int, ...] = (2,), layer_scale: float = 0.08, draft_layers: int = 2,
                   seed: int = 0):
    """A correlated hermetic pair: a random 4-layer target and a draft made of its first layers.

    Embeddings dominate the residual stream, so the draft agrees with the target about half the
    time (greedy): both the accepting and the rejecting paths run.
    """
    import dataclasses

    import jax

    from adasd_jax import models
    from adasd_jax.engine import Model, Pair

    c = models.Config(model_type="llama", vocab_size=vocab, hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2,
                      head_dim=16, intermediate_size=128, eos_token_ids=eos, max_position_embeddings=1024)
    pt = models.init_params(c, jax.random.key(seed), scale=layer_scale)
    pt["embed"], pt["lm_head"] = pt["embed"] / layer_scale, pt["lm_head"] / layer_scale
    dc = dataclasses.replace(c, num_layers=draft_layers)
    pd = dict(pt, layers=list(pt["layers"][:draft_layers]))
    return Pair(target=Model(c, pt, "tiny-target"), draft=Model(dc, pd, "tiny-draft"), tokenizer=None, vocab=vocab)


@pytest.fixture(scope="session")
def tiny_pair():
    return make_tiny_pair()


@pytest.fixture(scope="session")
def prompts():
    import numpy as np

    rng = np.random.default_rng(0)
    return [rng.integers(3, 96, n).tolist() for n in (5, 11, 8)]


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf):
    """(config, float32 params, tokenizer) of the real SmolLM2, loaded once per session."""
    from adasd_jax import models

    return models.load(smollm2_gguf, "float32")


def make_tokenizer(vocab: int = 96):
    """A word-level tokenizer over 'w3'..'w{vocab-1}' with <s>=1, </s>=2 and a one-line chat template."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers import models as tm
    from transformers import PreTrainedTokenizerFast

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    t = Tokenizer(tm.WordLevel(words, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.decoder = decoders.WordPiece(prefix="##")
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return tok


def make_hf_pair(root, layer_scale: float = 0.08, seed: int = 0):
    """The correlated tiny pair as Hugging Face directories with a tokenizer: (draft_dir, target_dir)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(TINY, num_hidden_layers=4, vocab_size=96, max_position_embeddings=1024, tie_word_embeddings=False)
    torch.manual_seed(seed)
    target = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **kw), dtype=torch.float32).eval()
    with torch.no_grad():
        for name, p in target.named_parameters():
            big = "embed" in name or "lm_head" in name
            p.copy_(torch.ones_like(p) if "norm" in name else torch.randn_like(p) * (1.0 if big else layer_scale))
    tok = make_tokenizer()
    target.save_pretrained(str(root / "target"))
    tok.save_pretrained(str(root / "target"))
    draft = AutoModelForCausalLM.from_config(AutoConfig.for_model("llama", **{**kw, "num_hidden_layers": 2}),
                                             dtype=torch.float32).eval()
    draft.load_state_dict({k: v for k, v in target.state_dict().items() if not k.startswith("model.layers.")
                           or int(k.split(".")[2]) < 2})
    draft.save_pretrained(str(root / "draft"))
    tok.save_pretrained(str(root / "draft"))
    return root / "draft", root / "target"


@pytest.fixture(scope="session")
def hf_pair(tmp_path_factory):
    return make_hf_pair(tmp_path_factory.mktemp("pair"))
