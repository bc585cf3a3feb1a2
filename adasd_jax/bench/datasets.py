"""Evaluation prompts and scoring, fixed so results compare across runs (see the spec)."""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

GSM8K_INSTRUCTION = "\nSolve step by step and end with 'The answer is N'."
_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


@dataclasses.dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str  # reference answer as written by the dataset
    chat: bool  # apply the chat template


def read_jsonl(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """Rows of a jsonl file, with errors that name the file, the line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); convert it to UTF-8 jsonl") from e
    rows = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{i} is not valid JSON: {e}") from e
        missing = [f for f in fields if f not in row]
        if missing:
            raise ValueError(f"{path}:{i} lacks field(s) {missing}; expected one JSON object per line with {list(fields)}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return rows


def gsm8k(path: str | Path, limit: int | None = None, offset: int = 0) -> list[Problem]:
    rows = read_jsonl(path, ("question", "answer"))[offset:]
    rows = rows[:limit] if limit else rows
    return [Problem(id=f"gsm8k/{offset + i}", prompt=r["question"] + GSM8K_INSTRUCTION, answer=r["answer"], chat=True)
            for i, r in enumerate(rows)]


def _clean(number: str) -> str:
    return number.replace(",", "").rstrip(".")


def extract_answer(text: str) -> str | None:
    """The number after the last 'The answer is', else the last number in the text."""
    tail = text.rsplit("The answer is", 1)
    if len(tail) == 2:
        m = _NUMBER.search(tail[1].replace("$", ""))
        if m:
            return _clean(m.group())
    numbers = _NUMBER.findall(text)
    return _clean(numbers[-1]) if numbers else None


def gsm8k_correct(text: str, answer: str) -> bool:
    pred = extract_answer(text)
    gold = _clean(answer.split("####")[-1].strip())
    try:
        return pred is not None and abs(float(pred) - float(gold)) < 1e-6
    except ValueError:
        return False
