"""Two hosts, for real: two JAX processes on this machine (4 forced CPU devices each, gloo collectives) joined by
`jax.distributed` through the CLI's own launch path, decoding on a data=2,model=4 mesh that spans both.

Process 1 is given its own --out-dir, standing for its own disk: it must write nothing there, print nothing, and
still take the same branch as process 0 (resume, refuse) from process 0's checkpoint, or the two would deadlock.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from conftest import gsm8k_file

from adasd_jax import cli

MESH = ["--mesh", "data=2,model=4"]


def launch(args_of, timeout: float = 420) -> list[subprocess.CompletedProcess]:
    """`python -m adasd_jax ARGS` as processes 0 and 1 of one JAX cluster; args_of(i) gives process i's ARGS."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for i in (0, 1):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
               "ADASD_NUM_PROCESSES": "2", "ADASD_PROCESS_ID": str(i),
               "XLA_FLAGS": "--xla_force_host_platform_device_count=4 --xla_backend_optimization_level=0"}
        env.pop("ADASD_DISTRIBUTED", None)  # the coordinator address alone asks for a cluster
        procs.append(subprocess.Popen([sys.executable, "-m", "adasd_jax", *map(str, args_of(i))], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    done = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            done.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        tails = [(p.communicate()[1] or "")[-1500:] for p in procs]
        pytest.fail(f"the two processes did not finish in {timeout}s (a deadlock?):\n" + "\n---\n".join(tails))
    return done


@pytest.fixture(scope="module")
def pair_args(hf_pair):
    draft, target = hf_pair
    return ["--draft", str(draft), "--target", str(target), "--dtype", "float32"]


def test_generate_across_two_processes_prints_once_and_equals_one_device(pair_args, capsys):
    args = ["generate", *pair_args, "--json", "--max-new-tokens", "8", "--method", "adasd:k_max=3",
            "w5 w9 w12", "w30 w31"]
    p0, p1 = launch(lambda i: [*args, *MESH])
    assert p0.returncode == 0 and p1.returncode == 0, p0.stderr[-2000:] + p1.stderr[-2000:]
    assert p1.stdout == ""  # only process 0 prints
    # gloo, the CPU collectives, prints its connections on stdout (from several threads): the JSON is one line
    got = json.loads(next(line for line in reversed(p0.stdout.splitlines()) if line.startswith("{")))
    assert cli.main(args) == 0  # this process alone, on one device
    want = json.loads(capsys.readouterr().out)
    assert [r["tokens"] for r in got["results"]] == [r["tokens"] for r in want["results"]]
    assert all(len(r["tokens"]) == 8 for r in got["results"])


def test_bench_resumes_and_refuses_as_one_across_two_processes(pair_args, tmp_path):
    data = gsm8k_file(tmp_path, 2, 9, 30)
    common = ["bench", *pair_args, *MESH, "--no-progress", "--no-plots", "--no-step-timing", "--data-file", data,
              "--max-new-tokens", "6", "--methods", "ar,adasd"]
    own = lambda name: lambda i: [*common, "--out-dir", tmp_path / (name if i == 0 else f"{name}_process1")]

    p0, p1 = launch(lambda i: [*own("first")(i), "--limit", 2])
    assert p0.returncode == 0 and p1.returncode == 0, p0.stderr[-2000:] + p1.stderr[-2000:]
    first = json.loads((tmp_path / "first" / "results.json").read_text())
    assert "wrote" in p0.stdout and p1.stdout == "" and not (tmp_path / "first_process1").exists()

    # process 0's disk holds the checkpoint of the same run interrupted after its first problem; process 1's, none
    (tmp_path / "rest").mkdir()
    (tmp_path / "rest" / "results.partial.json").write_text(json.dumps(
        {"config": first["config"], "chunks_done": 1, "target_step_samples_s": None,
         "records": {m: rs[:1] for m, rs in first["records"].items()}}))
    p0, p1 = launch(lambda i: [*own("rest")(i), "--limit", 2])
    for p in (p0, p1):  # both refuse, by name: neither goes on alone to wait for the other
        assert p.returncode == 2 and "pass --resume to continue it" in p.stderr, p.stderr[-2000:]

    p0, p1 = launch(lambda i: [*own("rest")(i), "--limit", 2, "--resume"])
    assert p0.returncode == 0 and p1.returncode == 0, p0.stderr[-2000:] + p1.stderr[-2000:]
    resumed = json.loads((tmp_path / "rest" / "results.json").read_text())
    assert not (tmp_path / "rest" / "results.partial.json").exists() and not (tmp_path / "rest_process1").exists()
    assert [r["at"] for r in resumed["config"]["resumed"]] == ["gsm8k/1"]
    tokens = lambda res, m: [r["tokens"] for r in res["records"][m]]
    assert tokens(resumed, "ar") == tokens(first, "ar")  # lossless: the resumed problem as in the whole run
    assert resumed["records"]["adasd"][0] == first["records"]["adasd"][0]
    assert [r["problem"] for r in resumed["records"]["adasd"]] == ["gsm8k/0", "gsm8k/1"]
