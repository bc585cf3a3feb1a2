"""Distillation's data: jsonl rows (GSM8K-style or `text`), tokenized into documents (or the target's own
continuations), packed into fixed-length rows, and the batch order, a pure function of (seed, step)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from adasd_jax import models
from adasd_jax.bench.datasets import GSM8K_INSTRUCTION, jsonl_rows


def read_rows(path: str | Path, offset: int = 0, limit: int | None = None) -> list[dict]:
    """Rows [offset, offset+limit) of a jsonl file: GSM8K-style (`question`, `answer`) or any `text` field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"data file {path} is not UTF-8 text ({e}); convert it to UTF-8 jsonl") from e
    rows = []
    for i, row in jsonl_rows(text, str(path)):
        if not isinstance(row, dict) or not (isinstance(row.get("text"), str)
                                             or isinstance(row.get("question"), str) and isinstance(row.get("answer"), str)):
            fields = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise ValueError(f"{path}:{i} has no string `text` field and no `question`+`answer` fields (found "
                             f"{fields}); give each line a `text`, or GSM8K's `question` and `answer`")
        rows.append(row)
    if not rows:
        raise ValueError(f"data file {path} is empty: it holds no JSON rows")
    picked = rows[offset:offset + limit if limit else None]
    if not picked:
        raise ValueError(f"data file {path} has {len(rows)} rows: none left at offset {offset}")
    return picked


def prompt_of(row: dict) -> str:
    return row["question"] + GSM8K_INSTRUCTION if "question" in row else row["text"]


def answer_of(row: dict) -> str:
    """GSM8K's reference answer without calculator marks, ending the way the eval prompt asks."""
    a = re.sub(r"<<[^>]*>>", "", row["answer"])
    return re.sub(r"\n?####\s*(.+)$", r"\nThe answer is \1.", a.strip())


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    if chat and tokenizer.chat_template:
        enc = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        return list(enc["input_ids"] if hasattr(enc, "keys") else enc)
    return tokenizer(text)["input_ids"]


def encode_row(tokenizer, row: dict, chat: bool) -> list[int]:
    """One training document: `text` as is, or a GSM8K question with its answer (chat template or plain)."""
    if "question" not in row:
        ids = tokenizer(row["text"])["input_ids"]
    elif chat and tokenizer.chat_template:
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt_of(row)},
                                              {"role": "assistant", "content": answer_of(row)}], tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    else:
        ids = tokenizer(f"Question: {prompt_of(row)}\nAnswer: {answer_of(row)}")["input_ids"]
    eos = tokenizer.eos_token_id
    return list(ids) + ([eos] if eos is not None and (not ids or ids[-1] != eos) else [])


def pack(docs: list[list[int]], seq_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenate documents and cut into [N, seq_len] rows: (tokens, loss mask, document ids).

    The tail row is padded and masked out; the document ids keep attention inside each document.
    """
    stream = np.asarray([t for d in docs for t in d], np.int32)
    if stream.size == 0:
        raise ValueError("the data tokenized to no tokens")
    n = -(-stream.size // seq_len)
    tokens = np.zeros(n * seq_len, np.int32)
    tokens[:stream.size] = stream
    mask = (np.arange(n * seq_len) < stream.size).astype(np.float32)
    segments = np.full(n * seq_len, -1, np.int32)  # padding: a document of its own
    segments[:stream.size] = np.repeat(np.arange(len(docs), dtype=np.int32), [len(d) for d in docs])
    return tokens.reshape(n, seq_len), mask.reshape(n, seq_len), segments.reshape(n, seq_len)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """The rows of batch `step`: epochs are permutations seeded by (seed, epoch); a pure function of step."""
    per_epoch = max(n // batch_size, 1)
    epoch, i = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if n < batch_size:  # fewer rows than a batch: repeat them
        order = np.resize(order, batch_size)
    return order[i * batch_size:(i + 1) * batch_size]


def continuations(target: models.Config, target_params, tokenizer, prompts: list[str], chat: bool,
                  max_new_tokens: int, batch_size: int = 16, progress: bool = True) -> list[list[int]]:
    """Prompt ids + the target's own greedy continuation, one document per prompt (method `ar`)."""
    from tqdm import tqdm

    from adasd_jax import engine

    pair = engine.Pair(target=engine.Model(target, target_params, "target"), draft=None, tokenizer=tokenizer,
                       vocab=target.vocab_size)
    docs = []
    for start in tqdm(range(0, len(prompts), batch_size), desc="target continuations", disable=not progress,
                      file=sys.stderr):
        chunk = prompts[start:start + batch_size]
        out = engine.generate(pair, chunk, method="ar", max_new_tokens=max_new_tokens, chat=chat)
        docs += [encode_prompt(tokenizer, p, chat) + t for p, t in zip(chunk, out.tokens)]
    return docs
