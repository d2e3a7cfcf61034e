"""Prints the ONNX node-test totals (collected, passed, failed, skipped by reason) after a run."""

from __future__ import annotations

from collections import Counter


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for kind in ("passed", "failed", "skipped"):
        for report in terminalreporter.stats.get(kind, []):
            if "test_onnx_node_tests.py::test_node_case" not in report.nodeid:
                continue
            if kind == "skipped" and report.when != "setup":
                continue
            if kind != "skipped" and report.when != "call":
                continue
            outcomes[kind] += 1
            if kind == "skipped":
                reasons[report.longrepr[2].removeprefix("Skipped: ")] += 1
    if not outcomes:
        return
    total = sum(outcomes.values())
    write = terminalreporter.write_line
    write(f"ONNX node tests: {total} collected, {outcomes['passed']} passed, {outcomes['failed']} failed, "
          f"{outcomes['skipped']} skipped")
    for reason, n in reasons.most_common():
        write(f"  skipped {n:4d}: {reason}")
