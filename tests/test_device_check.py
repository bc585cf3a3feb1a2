"""The device check's projection: per-round accounting of draft forwards and verification rows."""
from __future__ import annotations

from pathlib import Path

import pytest

from adasd_jax.bench import device_check
from adasd_jax.bench.device_check import project, round_seconds, verify_rows
from adasd_jax.policies import Method

# distinct powers of ten so that each sum below spells out how often each step was charged
T = {r: 10.0 ** (r % 10) * (1 + r // 10) for r in verify_rows((2, 4, 8, 15, 16))}
D = {1: 1e-3, 2: 2e-3}


def test_verify_rows_cover_every_width():
    assert verify_rows((2, 4, 8, 15, 16)) == [1, 2, 3, 4, 5, 8, 9, 16, 17]


def test_sd_round_all_accepted_feeds_two_tokens_next():
    m = Method.parse("sd:K=4")
    # round 1: 4 proposals, all accepted -> next round's first draft forward feeds 2 tokens; round 2: rejected at 1
    got = round_seconds(m, [4, 4], [4, 1], T, D)
    assert got == pytest.approx(2 * T[5] + (D[1] + 3 * D[1]) + (D[2] + 3 * D[1]))


@pytest.mark.parametrize("spec, steps", [("adasd", 4), ("adasd:propose_declined=1", 3)])
def test_declined_round_pays_the_stopping_step_unless_proposed(spec, steps):
    m = Method.parse(spec)
    # 3 proposals (spec: x_4 declined after its step; propose_declined: 3 proposals include the stopping token)
    got = round_seconds(m, [3], [3], T, D)
    assert got == pytest.approx(T[4] + D[1] + (steps - 1) * D[1])


def test_cap_round_runs_the_cap_width_and_empty_round_one_step():
    m = Method.parse("adasd")
    got = round_seconds(m, [16, 0], [16, 0], T, D)
    # the cap round: 17 rows, 16 forwards; the empty round (declined at once) after it: 1 forward of 2 tokens, 1 row
    assert got == pytest.approx(T[17] + 16 * D[1] + T[1] + D[2])


def test_project_tokens_exclude_the_prefill_token():
    rec = {"new_tokens": 11, "rounds": 2, "trace": {"draft_len": [4, 4], "accepted": [4, 4]}}
    p = project({"sd:K=4": [rec]}, T, D)
    seconds = round_seconds(Method.parse("sd:K=4"), [4, 4], [4, 4], T, D)
    assert p["sd:K=4"]["tokens_per_s"] == pytest.approx(10 / seconds)
    assert p["ar"]["tokens_per_s"] == pytest.approx(1 / T[1]) and p["ar"]["speedup_vs_ar"] == pytest.approx(1.0)
    assert p["sd:K=4"]["tokens_per_call"] == 5.0


def test_project_skips_peers_and_untraced_records():
    traced = {"new_tokens": 6, "rounds": 1, "trace": {"draft_len": [4], "accepted": [4]}}
    p = project({"hf-assisted": [traced], "sd:K=2": [{"new_tokens": 6, "rounds": 1}], "sd:K=4": [traced]}, T, D)
    assert set(p) == {"ar", "sd:K=4"}


def test_default_records_load_and_ask_for_every_width_they_ran():
    from adasd_jax.bench.device_check import CPU_RECORDS, load_runs, recorded_caps

    runs = load_runs(CPU_RECORDS)
    assert len(runs) == 2 and recorded_caps(runs) == {2, 4, 8, 15, 16}
    package = Path(device_check.__file__).parent  # an install carries them: nothing read from outside the package
    assert all(p.is_relative_to(package) for p in CPU_RECORDS)


def test_gpu_test_flags_fall_back_where_the_backend_refuses_them(capsys):
    import jax

    from adasd_jax.bench.device_check import xla_flags_for_tests

    assert xla_flags_for_tests("cpu") == ""
    if any(d.platform == "gpu" for d in jax.devices()):
        pytest.skip("a GPU is present: the probe would pass")
    # no CUDA backend here, so the probe process fails and the tests must not inherit a flag they cannot start with
    assert xla_flags_for_tests("cuda") == ""
    assert "tests run without it" in capsys.readouterr().out


def test_device_tests_start_each_worker_on_a_slow_test():
    from adasd_jax.bench.device_test_order import SLOWEST, slowest_first

    fast = [f"t::fast{i}" for i in range(3)]
    slow = [f"t::test_{s}]" for s in reversed(SLOWEST[:5])]  # collected fastest of the slow first
    got = slowest_first(fast[:1] + slow + fast[1:])
    # xdist hands out consecutive pairs: each pair leads with one of the slowest, slowest first, none lost
    assert got[0:6:2] == [f"t::test_{s}]" for s in SLOWEST[:3]] and got[1:6:2] == fast
    assert got[6:] == [f"t::test_{s}]" for s in SLOWEST[3:5]] and sorted(got) == sorted(fast + slow)


def test_saved_step_times_replay_over_other_records_and_name_missing_rows(tmp_path):
    import json

    from adasd_jax.bench.device_check import main, project

    rec = {"new_tokens": 9, "rounds": 2, "trace": {"draft_len": [4, 3], "accepted": [4, 2]}}
    records = tmp_path / "results.json"
    records.write_text(json.dumps({"config": {"temperature": 0.0}, "records": {"sd:K=4": [rec]}}))
    steps = {"device": "X", "target_steps": {str(r): {"step_ms": T[r] * 1e3} for r in (1, 2, 4, 5)},
             "draft_steps": {str(r): {"step_ms": D[r] * 1e3} for r in D}}
    saved = tmp_path / "check.json"
    saved.write_text(json.dumps(steps))
    out = tmp_path / "projected.json"
    assert main(["--steps-from", str(saved), "--records", str(records), "--json", str(out)]) == 0
    got = json.loads(out.read_text())["projected"][str(records)]
    want = project({"sd:K=4": [rec]}, {r: T[r] for r in (1, 2, 4, 5)}, D)
    assert got["sd:K=4"]["tokens_per_s"] == pytest.approx(want["sd:K=4"]["tokens_per_s"])
    del steps["target_steps"]["4"]  # the 3-proposal round verified 4 rows
    saved.write_text(json.dumps(steps))
    with pytest.raises(SystemExit, match=r"no target step time for \[4\] rows"):
        main(["--steps-from", str(saved), "--records", str(records)])


def test_step_programs_compile_at_once_and_time_without_compiling():
    import jax
    import jax.numpy as jnp

    from adasd_jax import models
    from adasd_jax.bench.device_check import compile_all, step_programs, time_steps

    c = models.Config(model_type="llama", vocab_size=64, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
                      head_dim=8, intermediate_size=64, max_position_embeddings=64)
    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda name, *a, **k: compiles.append(name) if name.endswith("backend_compile_duration") else None)
    prog = step_programs(jax, jnp, models, c, [1, 2, 5], position=8, cache_len=32, chain=4)
    assert sorted(map(str, prog["build"])) == ["1", "2", "5", "call"]
    built, wall = compile_all(prog["build"])
    assert wall > 0 and len(compiles) >= 4  # the three chains and the Python-called forward
    compiles.clear()
    got = time_steps(c, prog, built, repeats=4)
    assert sorted(got) == [1, 2, 5] and all(r["step_ms"] > 0 for r in got.values()) and got[1]["call_ms"] > 0
    assert compiles == []  # nothing compiles while timing


def test_the_check_runs_end_to_end_on_small_shapes(tmp_path, monkeypatch, capsys):
    """The whole check minus the test suite, on this CPU with small models standing in for the pair's shapes: every
    step and loop program compiles in one batch, then the steps, the loop and the projection come out."""
    import dataclasses
    import json

    from adasd_jax import models
    from adasd_jax.bench import device_check, roofline

    small = models.Config(model_type="qwen2", vocab_size=256, hidden_size=32, num_layers=2, num_heads=4,
                          num_kv_heads=2, head_dim=8, intermediate_size=64, max_position_embeddings=256, qkv_bias=True)
    monkeypatch.setattr(roofline, "TARGET", small)
    monkeypatch.setattr(roofline, "DRAFT", dataclasses.replace(small, num_layers=1))
    out = tmp_path / "check.json"
    assert device_check.main(["--skip-tests", "--repeats", "3", "--new-tokens", "8", "--position", "8",
                              "--cache-len", "64", "--copy-gib", "0.01", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    printed = capsys.readouterr().out
    rows = device_check.verify_rows(device_check.recorded_caps(device_check.load_runs(device_check.CPU_RECORDS)) | {4})
    assert sorted(map(int, report["target_steps"])) == rows and sorted(map(int, report["draft_steps"])) == [1, 2]
    assert f"compiled {len(rows) + 1 + 2 + 1 + 2} programs at once" in printed  # target + call, draft + call, loops
    for m in ("ar", "sd:K=4"):
        loop = report["loops"][m]
        assert loop["compile_s"] > 0 and loop["new_tokens"] == 8 and loop["ms_per_round"] > 0
    assert report["loops"]["ar"]["rounds"] == 8 and report["projected"] and "tests" not in report


def test_the_tests_get_what_the_timings_leave_of_the_budget():
    from adasd_jax.bench.device_check import MIN_TEST_S, time_for_tests

    assert time_for_tests(300, 90, None) == 200  # timings of 90 s: the tests get 200 s
    assert time_for_tests(300, 168, None) == MIN_TEST_S == 150  # timings of 168 s (an H200, 2026-11-28): the floor
    assert time_for_tests(300, 500, 240) == 240  # --test-timeout wins


def test_the_device_test_selection_is_the_24_parity_and_losslessness_tests():
    """The check selects its tests by name: a renamed test would silently leave it. Collected here (no device)."""
    import subprocess
    import sys

    from adasd_jax.bench.device_check import DEVICE_TEST_FILTER, DEVICE_TESTS, ROOT
    from adasd_jax.bench.device_test_order import SLOWEST

    p = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        *DEVICE_TESTS, "-k", DEVICE_TEST_FILTER], cwd=ROOT, capture_output=True, text=True,
                       check=False)
    ids = [line for line in p.stdout.splitlines() if "::" in line]
    assert p.returncode == 0 and len(ids) == 24, p.stdout[-3000:]  # with the cost-aware stop's losslessness
    assert {i.split("[")[1].rstrip("]") for i in ids if "prefill_logits" in i} == {"llama", "qwen2", "qwen2-tied"}
    for name in SLOWEST:  # the slowest-first order names tests that are there
        assert any(name in i for i in ids), name
    for word in ("lossless", "rollback", "ragged", "width_equals", "steps_equals"):
        assert any(word in i for i in ids), word
