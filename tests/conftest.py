import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="long mode of the differential fuzz (tests/test_fuzz.py): ~1,500 configurations, "
                          "not the few seconds CI spends")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_terminal_summary(terminalreporter):
    """The fuzz counts (configurations tried / clear error / wrong), per test and backend."""
    import sys

    fuzz = sys.modules.get("test_fuzz") or sys.modules.get("tests.test_fuzz")
    if fuzz is None or not fuzz.COUNTS:
        return
    terminalreporter.section("differential fuzz")
    total = {"tried": 0, "error": 0, "wrong": 0}
    for (what, backend), counts in sorted(fuzz.COUNTS.items()):
        terminalreporter.write_line(f"{what:24s} {backend:10s} tried {counts['tried']:5d}   "
                                    f"clear error {counts['error']:4d}   wrong {counts['wrong']:3d}")
        for key in total:
            total[key] += counts[key]
    terminalreporter.write_line(f"{'all':35s} tried {total['tried']:5d}   clear error {total['error']:4d}   "
                                f"wrong {total['wrong']:3d}")


@pytest.fixture
def seed():
    """A fresh seed per test run (printed on failure), so inputs are new each time."""
    value = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(value)
    return value
