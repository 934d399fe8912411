import os
import pathlib

from hypothesis import settings

# 'ci' (the default) is deterministic, so a CI failure reproduces; 'dev' explores new examples.
settings.register_profile("ci", max_examples=200, derandomize=True, deadline=None)
settings.register_profile("dev", max_examples=200, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    """Under pytest-xdist (the README's test command) each worker, and the processes its tests
    start, compile into a Numba cache directory of their own: Numba's cache index is not safe
    against two processes saving overloads of one function at the same time. (Numba reads the
    variable when it is first imported, which is later: at collection.)"""
    if hasattr(config, "workerinput"):
        caches = os.environ.get("NUMBA_CACHE_DIR") or config.rootpath / "build" / "numba-cache"
        os.environ["NUMBA_CACHE_DIR"] = str(pathlib.Path(caches) / config.workerinput["workerid"])


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
