"""The README's set-up commands are the ones CI runs and the ones the package supports."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", (ROOT / "README.md").read_text())


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    main_job, tests = _readme_commands()
    assert main_job == 'pip install ".[numba]" && fastlstm alphabet'
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == tests
