import os

from hypothesis import settings

# 'ci' (the default) is deterministic, so a CI failure reproduces; 'dev' explores new examples.
settings.register_profile("ci", max_examples=200, derandomize=True, deadline=None)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_terminal_summary(terminalreporter):
    counts = {
        outcome: sum("parity" in report.keywords for report in terminalreporter.stats.get(outcome, []))
        for outcome in ("passed", "failed", "skipped")
    }
    if any(counts.values()):
        terminalreporter.write_line(
            "Keras 3 parity cases: " + ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
        )


# tests/simulator needs NUMBA_ENABLE_CUDASIM=1 before numba is imported: its own process runs it
# (tests/test_numba_cuda.py), and the main run leaves it alone.
collect_ignore = [] if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1" else ["simulator"]
