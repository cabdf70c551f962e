"""A skipped reference test fails CI: the tools MergeDesk is compared with must be there.

The strongest tests compare MergeDesk with FlagEmbedding, sentence-transformers, mergekit and a
real browser (Playwright driving Chromium). Where one is missing such a test skips; locally that
is fine and the reason shows in the summary (`-rs` in pytest.ini), but under CI=true a skip
whose reason names a reference turns into a failure that says what to install, so a green CI
run cannot hide a comparison that never ran. Loaded from conftest.py as a plugin.
"""
import os
import re

import pytest

REFERENCE = re.compile(r"flagembedding|sentence[-_]transformers|mergekit|chromium|playwright", re.IGNORECASE)
MISSING = "CI=true and reference {name} is missing, so this comparison did not run: {reason}"


def _in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reference_named(report) -> tuple[str, str] | None:
    """(reference, skip reason) when `report` is a skip whose reason names a reference, else None."""
    if not report.skipped or hasattr(report, "wasxfail"):
        return None
    longrepr = report.longrepr
    reason = (longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)).removeprefix("Skipped: ")
    found = REFERENCE.search(reason)
    return (found.group(0), reason) if found else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI, a test skipped for a missing reference is reported as failed, with the reason."""
    outcome = yield
    report = outcome.get_result()
    named = _reference_named(report) if _in_ci() else None
    if named:
        report.outcome = "failed"
        report.longrepr = MISSING.format(name=named[0], reason=named[1])


def pytest_configure(config):
    """Under CI, watch for whole modules skipped for a missing reference."""
    if _in_ci():
        config.pluginmanager.register(ModuleSkips(), "reference-module-skips")


class ModuleSkips:
    """Modules skipped for a missing reference: named at the end, and the run exits 1."""

    def __init__(self):
        self.lines: list[str] = []

    def pytest_collectreport(self, report):
        named = _reference_named(report)
        if named:
            self.lines.append(f"{report.nodeid}: " + MISSING.format(name=named[0], reason=named[1]))

    def pytest_sessionfinish(self, session):
        if self.lines and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter):
        for line in self.lines:
            terminalreporter.write_line(f"FAILED {line}", red=True)
