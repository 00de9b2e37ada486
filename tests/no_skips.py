"""pytest plugin (registered by tests/conftest.py): nothing skips. A skip (pytest.skip, skipif, importorskip) is
reported as a failure, so a missing component (FFCV, SLURM, a dataset) shows as a failed test, not a quiet 's'.
The only tests that do not run are the deselected `gpu` ones where CUDA is absent (conftest.py)."""
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = str(report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        report.outcome = "failed"
        report.longrepr = f"{item.nodeid}: tests never skip (docs/testing.md); it tried to skip: {reason}"
