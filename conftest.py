"""Print how long each notebook took under nbval (make test reports it)."""
from collections import defaultdict

_seconds = defaultdict(float)


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[path] += report.duration


def pytest_terminal_summary(terminalreporter):
    if not _seconds:
        return
    terminalreporter.section("notebook execution times (nbval)")
    for path, secs in sorted(_seconds.items()):
        flag = "  <- over the 90 s budget" if secs > 90 else ""
        terminalreporter.write_line(f"{secs:7.1f} s  {path}{flag}")
    terminalreporter.write_line(f"{sum(_seconds.values()):7.1f} s  total")
