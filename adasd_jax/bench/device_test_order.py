"""pytest plugin for the device check's tests (`-p adasd_jax.bench.device_test_order`): slowest first."""

from __future__ import annotations

import pytest

# the tests that bound the device tests' duration, slowest first (one H200, 2026-11-28: 70, 70, 50, 47, 39, 39,
# 35 and 33 s; the other 15 took under 15 s each)
SLOWEST = ("thresholds_off", "draft_vocab_subset", "lossless_up_to_eos", "batch_equals_each_row_alone[adasd",
           "batch_equals_each_row_alone[dynamic", "batch_equals_each_row_alone[adaedl", "target_calls_and_draft",
           "batch_equals_each_row_alone[fsd")


def slowest_first(names: list[str]) -> list[str]:
    """The slowest tests at even places, each followed by one of the others: the pairs xdist hands out first."""
    rank = {n: next((i for i, s in enumerate(SLOWEST) if s in n), len(SLOWEST)) for n in names}
    slow = sorted((n for n in names if rank[n] < len(SLOWEST)), key=rank.get)
    rest = [n for n in names if rank[n] == len(SLOWEST)]
    paired = [n for pair in zip(slow, rest) for n in pair]
    k = min(len(slow), len(rest))
    return paired + slow[k:] + rest[k:]


@pytest.hookimpl(trylast=True)  # after `-k` has deselected
def pytest_collection_modifyitems(items) -> None:
    by_id = {item.nodeid: item for item in items}
    items[:] = [by_id[n] for n in slowest_first(list(by_id))]
