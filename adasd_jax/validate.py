"""One check of every input a person gives, shared by the CLI, the Python API and the benchmark: method strings,
numbers, prompts, data rows and output paths, all refused before any model loads.

Imports nothing heavy (no JAX, no numpy), so `adasd generate --method nope` answers at interpreter speed. Every
refusal is an `InputError` (a ValueError): one line that names the problem and the fix.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path

METHODS = ("ar", "sd", "dynamic", "adaedl", "fsd", "adasd")
DEFAULT_METHOD = "adasd:stop=cost"  # what generate, the CLI and the README run when no method is named
DRAFTING = METHODS[1:]
BOOLS = {"1": True, "true": True, "on": True, "0": False, "false": False, "off": False}
ALIASES = {"K": "k", "K_max": "k_max"}

# Each switch of `method.Method`: its kind ("bool", "int", "float", or the tuple of words it takes), the methods
# it applies to, and its range. A new Method field is one entry here (tests check the table against the dataclass).
OPTIONS = {
    "k": ("int", ("sd", "fsd"), (1, 64)),
    "k_max": ("int", ("dynamic", "adaedl", "adasd"), (1, 64)),
    "tau": ("float", ("fsd",), (0.0, 1.0)),
    "stats_on": (("strict", "final"), ("adasd",), None),
    "count_declined": ("bool", ("adasd",), None),
    "propose_declined": ("bool", ("adasd", "adaedl"), None),
    "entropy_stop": ("bool", ("adasd",), None),
    "t_g_rule": (("mean", "midpoint"), ("adasd",), None),
    "js_accept": ("bool", ("adasd",), None),
    "per_row": ("bool", ("adasd",), None),
    "draft_vocab": ("int", DRAFTING, (0, None)),
    "stop": (("entropy", "cost"), ("adasd",), None),
    "bins": ("int", ("adasd",), (2, 1024)),
    "signal": (("top1", "entropy"), ("adasd",), None),
}


class InputError(ValueError):
    """Input a person gave that cannot be used as it is; the message names the problem and the fix."""


# ---------------------------------------------------------------- methods

def applicable(name: str) -> list[str]:
    return [o for o, (_, methods, _) in OPTIONS.items() if name in methods]


def _allowed(option: str) -> str:
    kind, _, bounds = OPTIONS[option]
    if kind == "bool":
        return "0/1, true/false or on/off"
    if isinstance(kind, tuple):
        return " or ".join(kind)
    noun = "an integer" if kind == "int" else "a number"
    lo, hi = bounds
    return f"{noun} from {lo} to {hi}" if hi is not None else f"{noun} >= {lo}"


def option_value(option: str, value, from_text: bool = False):
    """`value` of a method option, checked (parsed from a method string's text when `from_text`)."""
    kind, _, bounds = OPTIONS[option]
    bad = InputError(f"method option {option}={value!r} is not {_allowed(option)}")
    if from_text:
        value = value.strip()
        if kind == "bool":
            if value.lower() not in BOOLS:
                raise bad
            return BOOLS[value.lower()]
        try:
            value = int(value) if kind == "int" else float(value) if kind == "float" else value
        except ValueError:
            raise bad from None
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = value in kind
    if ok and bounds is not None:
        lo, hi = bounds
        ok = lo <= value and (hi is None or value <= hi)
    if not ok:
        raise bad
    return value


def method_options(spec: str) -> tuple[str, dict]:
    """'fsd:tau=0.3,K=5' -> ('fsd', {'tau': 0.3, 'k': 5}): every option known, applicable to the method, valid."""
    if not isinstance(spec, str):
        raise InputError(f"method must be a string such as 'adasd' or 'sd:K=4' (or a Method), got {_kind(spec)}")
    name, _, opts = spec.strip().partition(":")
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    takes = applicable(name)
    kw: dict = {}
    for item in filter(None, (x.strip() for x in opts.split(","))):
        key, eq, val = item.partition("=")
        key = ALIASES.get(key.strip(), key.strip())
        if key not in OPTIONS or not eq:
            hint = f"{name} takes {', '.join(takes)}" if takes else f"{name} takes no options"
            what = f"unknown method option {key!r}" if key not in OPTIONS else f"method option {key!r} has no value"
            raise InputError(f"{what} in {spec!r}: {hint} (as option=value)")
        if name not in OPTIONS[key][1]:
            hint = f"{name} takes {', '.join(takes)}" if takes else f"{name} takes no options"
            raise InputError(f"method option {key} applies to {', '.join(OPTIONS[key][1])}, not {name} ({hint})")
        if key in kw:
            raise InputError(f"method option {key} is given twice in {spec!r}: keep one")
        kw[key] = option_value(key, val, from_text=True)
    return name, kw


def method_fields(name: str, fields: dict, defaults: dict) -> None:
    """Check a Method's fields (built from a string or directly): the name, each switch the method uses, and that
    no other switch is set away from its default (k and k_max, which size the loop's buffers, excepted)."""
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    for option, value in fields.items():
        if option not in OPTIONS:
            continue
        if name in OPTIONS[option][1]:
            option_value(option, value)
        elif option not in ("k", "k_max") and value != defaults[option]:
            raise InputError(f"method option {option} applies to {', '.join(OPTIONS[option][1])}, not {name}")


# ---------------------------------------------------------------- numbers

def _kind(x) -> str:
    """How a refused value is shown: a number as itself, anything else with its type."""
    if isinstance(x, numbers.Real) and not isinstance(x, bool):
        return repr(x)
    return f"{type(x).__name__} {x!r}" if not isinstance(x, (bytes, str)) or len(x) < 40 else type(x).__name__


def integer(name: str, value, lo: int | None = None, none_means: str | None = None):
    """An int (not a bool, a float or a string) >= lo; None allowed when `none_means` says what it means."""
    if value is None and none_means is not None:
        return None
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or (lo is not None and value < lo):
        extra = f" ({none_means})" if none_means else ""
        raise InputError(f"{name} must be an integer{f' >= {lo}' if lo is not None else ''}{extra}, got "
                         f"{_kind(value)}")
    return int(value)


def real(name: str, value, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
         note: str = "") -> float:
    """A finite number within [lo, hi] ((lo, hi] when `lo_open`); `note` says what the values mean."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value <= hi
    if not ok:
        span = (f"in {'(' if lo_open else '['}{lo}, {hi}]" if hi is not None else
                f"{'>' if lo_open else '>='} {lo}" if lo is not None else "")
        raise InputError(f"{name} must be a finite number {span}{note}, got {_kind(value)}".replace("  ", " "))
    return float(value)


def sampling(temperature, top_k, top_p, flag: bool = False) -> None:
    n = _namer(flag)
    real(n("temperature"), temperature, lo=0, note=" (0 = greedy)")
    integer(n("top_k"), top_k, lo=0)
    real(n("top_p"), top_p, lo=0, hi=1, lo_open=True, note=" (1 = off)")


def _namer(flag: bool):
    return (lambda s: "--" + s.replace("_", "-")) if flag else (lambda s: s)


def generation(method, max_new_tokens, temperature, top_k, top_p, seed, batch_size, flag: bool = False) -> None:
    """Every argument of a generate call but the prompts, checked before any model loads (`flag`: name them as
    the CLI's flags)."""
    n = _namer(flag)
    if not hasattr(method, "uses_draft"):  # a string (a Method was checked when it was built)
        method_options(method)
    integer(n("max_new_tokens"), max_new_tokens, lo=1)
    sampling(temperature, top_k, top_p, flag)
    integer(n("seed"), seed, lo=0)
    integer(n("batch_size"), batch_size, lo=1,
            none_means="leave it out for all prompts at once" if flag else "None: all prompts at once")


# ---------------------------------------------------------------- prompts

def text(where: str, s: str) -> str:
    """`s` if it is valid Unicode text (an argument or file with bytes that are not UTF-8 carries lone surrogates)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = s[e.start].encode("utf-8", "surrogateescape") if 0xDC80 <= ord(s[e.start]) <= 0xDCFF else None
        byte = f"byte 0x{bad.hex()}" if bad else f"code point U+{ord(s[e.start]):04X}"
        raise InputError(f"{where} is not valid UTF-8 text ({byte} at character {e.start}): "
                         "pass UTF-8 text, or convert it first (e.g. iconv -t UTF-8)") from None
    return s


def _token_ids(p) -> list[int] | None:
    """A prompt given as token ids (a list, tuple or 1-D array of ints), else None."""
    if isinstance(p, (str, bytes, bytearray, dict)) or not hasattr(p, "__iter__") or not hasattr(p, "__len__"):
        return None
    ids = list(p)
    if all(isinstance(t, numbers.Integral) and not isinstance(t, bool) for t in ids):
        return [int(t) for t in ids]
    return None


def prompts(value) -> list:
    """A list of prompts from a string, a list of strings, token ids, or a list of token-id lists."""
    fix = "pass a string, a list of strings, or lists of token ids"
    if isinstance(value, str):
        return [text("the prompt", value)]
    if isinstance(value, (bytes, bytearray)):
        raise InputError(f"the prompt is bytes: decode it to a string first (e.g. b.decode('utf-8')), or {fix}")
    ids = _token_ids(value)
    if ids:  # one prompt of token ids
        return [ids]
    if value is None or not hasattr(value, "__iter__") or isinstance(value, dict):
        raise InputError(f"prompts must be given: {fix}; got {_kind(value)}")
    items = list(value)
    if not items:
        raise InputError(f"no prompts: the list is empty; {fix}")
    out = []
    for i, p in enumerate(items):
        if isinstance(p, str):
            out.append(text(f"prompt {i}", p))
            continue
        if isinstance(p, (bytes, bytearray)):
            raise InputError(f"prompt {i} is bytes: decode it to a string first (e.g. b.decode('utf-8'))")
        ids = _token_ids(p)
        if ids is None:
            raise InputError(f"prompt {i} is {_kind(p)}: {fix}")
        out.append(ids)
    return out


def one_prompt(value):
    """A single prompt (streaming): a string or a list of token ids."""
    if not isinstance(value, str) and _token_ids(value) is None:
        raise InputError(f"stream takes one prompt, a string or a list of token ids; got {_kind(value)}")
    return prompts(value)[0]


# ---------------------------------------------------------------- data rows

def row_fields(row, fields: tuple[str, ...], where: str, kinds: dict | None = None) -> dict:
    """A data row (a JSON object) with each of `fields` present and a string, or of its type in `kinds` (a list:
    a non-empty list of strings)."""
    if not isinstance(row, dict):
        raise InputError(f"{where} is a JSON {type(row).__name__}, not an object; expected one object per line with "
                         f"{list(fields)}")
    missing = [f for f in fields if f not in row]
    if missing:
        raise InputError(f"{where} lacks field(s) {missing}; expected one JSON object per line with {list(fields)}")
    for f in fields:
        kind = (kinds or {}).get(f, str)
        v = row[f]
        ok = isinstance(v, kind) and not isinstance(v, bool)
        if ok and kind is list:
            ok = bool(v) and all(isinstance(x, str) for x in v)
        if not ok:
            want = "a non-empty list of strings" if kind is list else "a string" if kind is str else " or ".join(
                k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise InputError(f"{where}: field {f!r} is {_kind(v)}, expected {want}; fix that line of the file")
        for x in (v if isinstance(v, list) else [v]):
            if isinstance(x, str):
                text(f"{where}: field {f!r}", x)
    return row


# ---------------------------------------------------------------- output paths

def output(path, flag: str, overwrite: bool = False, sources=(), may_hold: tuple[str, ...] = ()) -> Path:
    """An output directory that can be written without destroying anything: absent, empty, holding only the
    names in `may_hold` (this program's own files), or (with `overwrite`) anything but one of `sources` or what
    holds them. Its parent must be a directory (created when missing)."""
    p = Path(path).expanduser().absolute()
    for s in sources:
        if not s:
            continue
        s = Path(s).expanduser().absolute()
        if s.exists() and (p == s or p in s.parents or s in p.parents):
            raise InputError(f"{flag} {path} {'is' if p == s else 'overlaps'} the source {s}: writing there would "
                             "replace what is being read; pick another output path")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                raise InputError(f"{flag} {path}: {parent} is a file, not a directory; pick another output path")
            break
    if overwrite or not p.exists() and not p.is_symlink():
        return p
    if not p.is_dir() or p.is_symlink():
        raise InputError(f"{flag} {path} is an existing file: pick another path, or pass --overwrite to replace it")
    extra = sorted(x.name for x in p.iterdir() if x.name not in may_hold)
    if extra:
        shown = ", ".join(extra[:3]) + (f" and {len(extra) - 3} more" if len(extra) > 3 else "")
        raise InputError(f"{flag} {path} is a directory that already holds files ({shown}): pick a new or empty "
                         "directory, or pass --overwrite to replace its contents")
    return p
