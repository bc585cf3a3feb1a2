"""HumanEval's generated code runs isolated: each escape a program tried under `reliability_guard` alone now fails,
and where isolation is impossible nothing runs unless asked for with --unsafe-exec."""
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from adasd_jax.bench import execution

needs_sandbox = pytest.mark.skipif(execution.sandbox_problem() is not None,
                                   reason=f"no sandbox here: {execution.sandbox_problem()}")


def run(src: str, **kw) -> tuple[bool, str]:
    return execution.run_program(src, **kw)


@needs_sandbox
def test_honest_programs_still_pass_and_write_their_own_directory():
    assert run("open('scratch.txt', 'w').write('x'); assert open('scratch.txt').read() == 'x'") == (True, "passed")
    assert run("raise ValueError('no')") == (False, "failed: ValueError: no")


def refused_write(src: str) -> None:
    ok, result = run(src)
    assert not ok and "Read-only file system" in result, result


@needs_sandbox
@pytest.mark.parametrize("harm", ["import posix\nposix.unlink({victim!r})", "open({victim!r}, 'w').write('gone')"],
                         ids=["unlink", "overwrite"])
def test_unlinking_or_overwriting_a_file_outside_fails(tmp_path, harm):
    victim = tmp_path / "keep.txt"
    victim.write_text("keep")
    refused_write(harm.format(victim=str(victim)))
    assert victim.read_text() == "keep"


@needs_sandbox
def test_removing_a_directory_outside_fails(tmp_path):
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir(), full.mkdir()
    (full / "f.txt").write_text("keep")
    refused_write(f"import posix\nposix.rmdir({str(empty)!r})")
    refused_write(f"import posix\nposix.unlink({str(full / 'f.txt')!r})\nposix.rmdir({str(full)!r})")
    assert empty.is_dir() and (full / "f.txt").read_text() == "keep"


@needs_sandbox
def test_writing_to_tmp_outside_its_own_directory_fails():
    refused_write("open('/tmp/adasd-sandbox-escape', 'w').write('x')")
    assert not Path("/tmp/adasd-sandbox-escape").exists()


@needs_sandbox
def test_no_network():
    got, server = [], socket.create_server(("127.0.0.1", 0))
    server.settimeout(5)
    port = server.getsockname()[1]

    def accept():
        try:
            conn, _ = server.accept()
            got.append(conn.recv(100))
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    ok, result = run(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\n"
                     "s.sendall(b'escaped')")
    server.close()
    t.join()
    assert not ok and "unreachable" in result
    assert got == []


@needs_sandbox
def test_the_users_home_and_cache_are_not_visible():
    marker = Path.home() / ".cache" / f"adasd-sandbox-{uuid.uuid4().hex}"
    marker.mkdir(parents=True)
    try:
        ok, result = run(f"import os\ncache = {str(marker.parent)!r}\n"
                         "seen = os.listdir(cache) if os.path.isdir(cache) else []\n"
                         "raise SystemExit('SEEN ' + repr(seen))")
    finally:
        marker.rmdir()
    assert not ok and result.startswith("failed: SEEN") and marker.name not in result
    assert result == "failed: SEEN []"


@needs_sandbox
def test_no_process_outlives_the_run():
    name = uuid.uuid4().hex[:15]  # the child's name in /proc/PID/comm
    ok, result = run("import ctypes, posix, time\n"
                     "if posix.fork() == 0:\n"
                     "    posix.setsid()\n"
                     f"    ctypes.CDLL(None).prctl(15, {name.encode()!r}, 0, 0, 0)\n"
                     "    time.sleep(60)\n"
                     "    posix._exit(0)\n"
                     "time.sleep(0.5)\n")
    assert (ok, result) == (True, "passed")
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _comm(p) == name]
        if not alive:
            break
        time.sleep(0.05)
    assert alive == []


def _comm(p: Path) -> str | None:
    try:
        return (p / "comm").read_text().strip()
    except OSError:
        return None


@needs_sandbox
def test_loops_and_sleeps_still_stop():
    assert run("while True:\n    pass\n", timeout=1.5) == (False, "timed out")
    assert run("import time\ntime.sleep(30)\n", timeout=1.5) == (False, "timed out")


def test_without_a_sandbox_nothing_runs_unless_unsafe(monkeypatch, tmp_path):
    monkeypatch.setattr(execution, "sandbox_problem", lambda: "user namespaces are disabled")
    victim = tmp_path / "ran"
    with pytest.raises(execution.SandboxUnavailable, match="cannot be isolated.*user namespaces are disabled.*"
                                                           "--unsafe-exec"):
        run(f"open({str(victim)!r}, 'w').write('x')")
    assert not victim.exists()
    assert run(f"open({str(victim)!r}, 'w').write('x')", unsafe=True) == (True, "passed")
    assert victim.exists()  # unsafe: unisolated, as the flag says


def test_bench_refuses_humaneval_without_a_sandbox_before_loading(monkeypatch, tmp_path, capsys):
    from adasd_jax import cli, loading

    monkeypatch.setattr(execution, "sandbox_problem", lambda: "no unshare")
    monkeypatch.setattr(loading, "load_pair", lambda **kw: pytest.fail("loaded a model"))
    rc = cli.main(["bench", "--dataset", "humaneval", "--no-progress", "--out-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "--unsafe-exec" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_the_sandbox_is_said_in_help(capsys):
    from adasd_jax.bench import options

    with pytest.raises(SystemExit):
        options.parser().parse_args(["--help"])
    assert "--unsafe-exec" in capsys.readouterr().out
