"""The README's set-up commands are the ones CI runs and the ones the package supports, its Python
examples run as written, its links lead somewhere, and its GPU results are those of the newest GPU
run kept in bench/results/."""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _readme_commands():
    return re.findall(r"```bash\n(.+?)\n```", README.read_text())


def python_blocks(markdown):
    """Every ```python block of ``markdown``, in order."""
    return re.findall(r"```python\n(.+?)```", markdown, re.DOTALL)


def run_python_block(code, cwd):
    """Runs ``code`` as a reader would paste it: in a fresh interpreter outside the checkout, with
    Keras on TensorFlow (Keras reads KERAS_BACKEND once, when it is first imported)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "KERAS_BACKEND": "tensorflow"})


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    main_job, tests = _readme_commands()
    assert main_job == 'pip install ".[numba]" && fastlstm alphabet'
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == tests


def test_readme_has_the_three_quick_starts():
    blocks = python_blocks(README.read_text())
    assert [("lstm_forward" in code, "fastlstm.nn" in code, "fastlstm.keras" in code) for code in blocks] == [
        (True, False, False), (False, True, False), (False, False, True)]


@pytest.mark.parametrize("number", range(len(python_blocks(README.read_text()))))
def test_readme_python_block_runs(number, tmp_path):
    result = run_python_block(python_blocks(README.read_text())[number], tmp_path)
    assert result.returncode == 0, f"README's Python block {number + 1} failed:\n{result.stderr}"


def markdown_links(path):
    """The relative links of the Markdown file ``path``: (target file, anchor or None)."""
    links = re.findall(r"\]\(([^)\s]+)\)", path.read_text())
    return [(path.parent / target if target else path, anchor or None)
            for target, _, anchor in (link.partition("#") for link in links) if "://" not in target]


def anchors(path):
    """GitHub's anchors of the headings of the Markdown file ``path``."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


@pytest.mark.parametrize("document", ["README.md", "kernels/README.md", "bench/README.md",
                                      *[str(p.relative_to(ROOT)) for p in (ROOT / "bench" / "results").glob("*/README.md")]])
def test_relative_links_lead_to_a_file_and_heading(document):
    broken = [f"{target}#{anchor}" if anchor else str(target) for target, anchor in markdown_links(ROOT / document)
              if not target.exists() or (anchor and anchor not in anchors(target))]
    assert broken == []


# The GPU results: the README's table is the GPU table of the newest `fastlstm gpu-check` run kept
# in bench/results/DATE-GPU/, named with its folder (which records the commit); until a run exists, it says so.
NO_GPU_RESULTS = "GPU results: none yet."


def newest_gpu_run(results):
    """The newest folder under ``results`` whose summary.json names a device (a run on a GPU), or
    None. The folders are named DATE-GPU, so their names sort by date."""
    runs = sorted(summary.parent for summary in results.glob("*/summary.json")
                  if json.loads(summary.read_text()).get("device"))
    return runs[-1] if runs else None


def gpu_results_mismatch(readme, results):
    """What keeps the README's GPU results from being those of the newest run under ``results``:
    a list of problems, empty where they agree."""
    run = newest_gpu_run(results)
    if run is None:
        return [] if NO_GPU_RESULTS in readme else [f"no GPU run in {results}, and the README does not say so"]
    report = (run / "bench-report.md").read_text()
    table = report.split("## Kernels on the GPU", 1)[1].split("\n\n")[1]
    expected = {f"the GPU table of {run.name}": table, "the run's folder": run.name}
    return [f"the README lacks {what}" for what, text in expected.items() if text not in readme] + \
        ([f"the README still says {NO_GPU_RESULTS!r}"] if NO_GPU_RESULTS in readme else [])


def test_readme_gpu_results_are_those_of_the_newest_gpu_run():
    assert gpu_results_mismatch(README.read_text(), ROOT / "bench" / "results") == []


def test_a_gpu_run_must_reach_the_readme(tmp_path):
    table = "| dtype | pass | fastlstm-cupy ms |\n| - | - | - |\n| float32 | forward | 0.050 |"
    for name, device in (("2026-12-01-h100", {"name": "NVIDIA H100"}), ("2026-12-05-cpu", None),
                         ("2026-11-30-a100", {"name": "NVIDIA A100"})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(json.dumps({"device": device, "commit": "abcdef0123"}))
        (tmp_path / name / "bench-report.md").write_text(f"Benchmarks\n\n## Kernels on the GPU: x\n\n{table}\n")
    assert newest_gpu_run(tmp_path).name == "2026-12-01-h100"  # the newest with a device
    assert len(gpu_results_mismatch(f"{NO_GPU_RESULTS} ...", tmp_path)) == 3
    assert gpu_results_mismatch(f"2026-12-01-h100\n\n{table}\n", tmp_path) == []
    assert gpu_results_mismatch("no GPU run\n", tmp_path / "2026-12-05-cpu") == [
        f"no GPU run in {tmp_path / '2026-12-05-cpu'}, and the README does not say so"]
