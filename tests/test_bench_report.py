"""fastlstm bench-report, on a real (tiny) run of bench/ and on hand-made results."""
import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import pytest

from fastlstm import bench_report

ROOT = pathlib.Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


def _run_bench(path, test_file, selection):
    """Runs bench/``test_file``'s benchmarks that ``selection`` (-k) picks, briefly, into the
    --benchmark-json file ``path``."""
    # Without pytest-xdist's variables, which a worker's children inherit: pytest-benchmark would
    # take them for a parallel run and refuse to time.
    env = {name: value for name, value in os.environ.items() if not name.startswith("PYTEST_XDIST_")}
    subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "bench" / test_file), "-q", "-p", "no:cacheprovider",
         "--rootdir", str(ROOT), "-c", str(ROOT / "pyproject.toml"), "--benchmark-only",
         "--benchmark-min-rounds=1", "--benchmark-max-time=0.01", "--benchmark-warmup=off",
         f"--benchmark-json={path}", "-k", selection],
        check=True, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir(), timeout=600)
    return path


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """A --benchmark-json file of bench/, a few fastlstm-numpy and Keras shapes of the batch sweep."""
    return _run_bench(tmp_path_factory.mktemp("bench") / "results.json", "test_kernels.py",
                      "(fastlstm-numpy or keras) and (b1-t1-d16 or b8-t1-d16 or b1-t25-d16)")


def test_a_real_run_becomes_a_table_and_plots(results, tmp_path):
    markdown = bench_report.report(results, tmp_path)
    assert (tmp_path / "bench-report.md").read_text() == markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| float32")]
    assert len(rows) == 6  # 3 shapes x 2 passes
    assert all(line.split("|")[-2].strip().endswith("x") for line in rows)  # a speed-up over Keras in each
    plots = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in plots] == ["forward-float32-d16-u32.png", "forward_backward-float32-d16-u32.png"]
    assert all(p.read_bytes().startswith(PNG) and p.stat().st_size > 10_000 for p in plots)


def test_a_real_run_records_the_cpu_as_the_kernels_see_it(results, tmp_path):
    """The CPU's model, its vector extensions and numba_cpu's target and tile, in the file and in
    the report's first line; every kernel benchmark timed alone."""
    document = json.loads(results.read_text())
    cpu = document["machine_info"]["fastlstm_cpu"]
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    assert ("avx2" in cpu["vector_extensions"]) == (" avx2" in flags)
    target = cpu["numba_target"]
    assert re.fullmatch(r"\d+ rows x \d+ vectors of (128|256|512) bits \(\d+ rows in float64\)", target["tile"])
    assert {b["extra_info"]["situation"] for b in document["benchmarks"]} == {"alone"}
    first_line = bench_report.report(results, tmp_path, plots=False).splitlines()[0]
    assert cpu["model"] in first_line and f"numba_cpu compiled for {target['cpu_name']}, tile {target['tile']}" \
        in first_line


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("numba", "torch", "tensorflow", "keras")),
                    reason="times numba_cpu side by side with PyTorch, TensorFlow and Keras")
def test_a_real_side_by_side_run_times_each_after_the_others_in_a_table_of_its_own(tmp_path):
    path = _run_bench(tmp_path / "side.json", "test_side_by_side.py", "b1-t25-d16")
    benchmarks = json.loads(path.read_text())["benchmarks"]
    timed = {(b["extra_info"]["implementation"], b["extra_info"]["pass_name"]) for b in benchmarks}
    assert timed == {(name, p) for name in ("fastlstm-numba_cpu", "keras", "tensorflow", "torch")
                     for p in ("forward", "forward_backward")}
    assert {(b["extra_info"]["situation"], b["stats"]["rounds"]) for b in benchmarks} == {("side by side", 9)}
    markdown = bench_report.report(path, tmp_path, plots=False)
    assert "## Kernels side by side in one process" in markdown and "## Kernels, each" not in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| float32")]
    assert len(rows) == 2 and all(line.split("|")[-2].strip().endswith("x") for line in rows)


def _bench(implementation, baseline, median_seconds, batch, time=1, situation="alone"):
    return {"extra_info": {"implementation": implementation, "baseline": baseline, "pass_name": "forward",
                           "batch": batch, "time": time, "input_dim": 1, "units": 8, "dtype": "float32",
                           "situation": situation},
            "stats": {"median": median_seconds}}


def test_alone_and_side_by_side_are_compared_each_within_its_own_table(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"benchmarks": [
        _bench("fastlstm-numba_cpu", False, 0.001, 1), _bench("torch", True, 0.002, 1),
        _bench("fastlstm-numba_cpu", False, 0.004, 1, situation="side by side"),
        _bench("torch", True, 0.003, 1, situation="side by side"),
    ]}))
    sections = bench_report.report(path, tmp_path, plots=False).split("## ")
    alone, = (s for s in sections if s.startswith("Kernels, each implementation alone"))
    side, = (s for s in sections if s.startswith("Kernels side by side"))
    assert [c.strip() for c in alone.splitlines()[4].split("|")[4:7]] == ["1.000", "2.000", "2.00x"]
    assert [c.strip() for c in side.splitlines()[4].split("|")[4:7]] == ["4.000", "3.000", "0.75x"]
    # The plots are of the implementations alone: with one batch size each, no curve to draw.
    rows = bench_report.load(path)
    assert bench_report.plot(rows + [{**r, "batch": 2} for r in rows if r["situation"] == "side by side"],
                             tmp_path) == []


def test_speedups_are_over_the_fastest_baseline(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"benchmarks": [
        _bench("fastlstm-numpy", False, 0.001, 1), _bench("keras", True, 0.004, 1), _bench("torch", True, 0.003, 1),
    ]}))
    table = bench_report.kernel_table(bench_report.load(path))
    row = table.splitlines()[2].split("|")
    assert [c.strip() for c in row[4:8]] == ["1.000", "4.000", "3.000", "3.00x"]


def test_the_share_of_matrix_product_throughput_counts_the_products_flops(tmp_path):
    """1024, 25, 64, 128: 5.03 GFLOP forward, three times as many forward+backward; only the
    passes timed alone (one side by side, the machine shared, is left out)."""
    shape = dict(batch=1024, time=25, input_dim=64, units=128, dtype="float32", baseline=False)
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"benchmarks": [
        {"extra_info": {"implementation": "fastlstm-numba_cpu", "pass_name": name, "matrix_product_gflops": 150.0,
                        "situation": situation, **shape}, "stats": {"median": seconds}}
        for name, seconds, situation in (("forward", 0.05, "alone"), ("forward_backward", 0.2, "alone"),
                                         ("forward", 0.08, "side by side"))
    ] + [{"extra_info": {"implementation": "torch", "pass_name": "forward", **shape, "baseline": True},
          "stats": {"median": 0.04}}]}))
    rows = [[c.strip() for c in line.split("|")[1:-1]]
            for line in bench_report.throughput_table(bench_report.load(path)).splitlines()[2:]]
    assert rows == [
        ["fastlstm-numba_cpu", "forward", "1024, 25, 64, 128", "5.03", "50.0", "100.7", "150.0", "67 %"],
        ["fastlstm-numba_cpu", "forward+backward", "1024, 25, 64, 128", "15.10", "200.0", "75.5", "150.0", "50 %"],
    ]


def test_the_tutorial_experiments_at_full_length_are_totalled_per_implementation(tmp_path):
    def full(implementation, number, tutorial, median_seconds, training_seconds):
        return {"extra_info": {"implementation": implementation, "baseline": False, "experiment": number,
                               "tutorial": tutorial, "epochs": 500, "training_seconds": training_seconds},
                "stats": {"median": median_seconds}}
    one_epoch = {"extra_info": {"implementation": "keras", "baseline": True, "experiment": 1},
                 "stats": {"median": 9.0}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"benchmarks": [
        full("fastlstm-numba_cpu", 2, True, 0.25, 0.2), full("fastlstm-numba_cpu", 1, True, 4.0, 3.75),
        full("fastlstm-numba_cpu", 7, False, 100.0, 99.0), full("fastlstm-numpy", 1, True, 60.0, 59.5), one_epoch,
    ]}))
    lines = bench_report.training_table(bench_report.load(path)).split("\n\n")[1:]
    assert lines == [
        "fastlstm-numba_cpu, the tutorial's experiments 1, 2 at full length together: 4.25 s, 3.95 s of it training.",
        "fastlstm-numpy, the tutorial's experiment 1 at full length together: 60.00 s, 59.50 s of it training.",
    ]


def test_results_without_fastlstm_benchmarks_are_refused(tmp_path):
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"benchmarks": [{"extra_info": {}, "stats": {"median": 1.0}}]}))
    result = subprocess.run([sys.executable, "-m", "fastlstm", "bench-report", str(path)], capture_output=True,
                            text=True, cwd=tempfile.gettempdir())
    assert result.returncode == 2 and "holds no fastlstm benchmarks" in result.stderr


_KERNEL = _bench("fastlstm-numpy", False, 0.001, 1)


@pytest.mark.parametrize(
    "content, words",
    [(b"", "is not JSON"), (b"not json", "is not JSON"), (b"\x89PNG\r\n\x1a\n\xff\xfe", "is not JSON"),
     (b"[]", "it is an array, not an object"),
     (json.dumps({"benchmarks": "abc"}).encode(), "'benchmarks' is a string, not an array"),
     (json.dumps({"benchmarks": ["abc"]}).encode(), "benchmark 0 is a string, not an object"),
     (json.dumps({"benchmarks": [{**_KERNEL, "stats": None}]}).encode(), "benchmark 0 has no 'stats' median in seconds"),
     (json.dumps({"benchmarks": [{k: v for k, v in _KERNEL.items() if k != "stats"}]}).encode(),
      "benchmark 0 has no 'stats' median in seconds"),
     (json.dumps({"benchmarks": [_KERNEL, {**_KERNEL, "stats": {"median": "1"}}]}).encode(),
      "benchmark 1 has no 'stats' median in seconds"),
     (json.dumps({"benchmarks": [{**_KERNEL, "extra_info": {**_KERNEL["extra_info"], "baseline": None}}]}).encode(),
      "benchmark 0 has no 'baseline'"),
     (json.dumps({"benchmarks": [{**_KERNEL, "extra_info": {k: v for k, v in _KERNEL["extra_info"].items()
                                                            if k != "baseline"}}]}).encode(),
      "benchmark 0 has no 'baseline'")],
)
def test_a_file_of_another_shape_is_refused_in_one_line_naming_it(tmp_path, content, words):
    path = tmp_path / "r.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: .*{re.escape(words)}"):
        bench_report.load(path)
    result = subprocess.run([sys.executable, "-m", "fastlstm", "bench-report", str(path), "--no-plots",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"fastlstm bench-report: error: {path}: ") and words in last


def test_a_missing_file_is_refused_in_one_line_naming_it(tmp_path):
    path = tmp_path / "missing.json"
    result = subprocess.run([sys.executable, "-m", "fastlstm", "bench-report", str(path), "--no-plots"],
                            capture_output=True, text=True, cwd=tempfile.gettempdir())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == f"fastlstm bench-report: error: {path}: No such file or directory"


def test_a_gpu_run_is_reported_against_gpu_baselines_and_names_the_gpu(tmp_path):
    """tests/data/gpu-bench.json: a run's file as bench/ writes it on a GPU machine (the extra_info
    of bench/conftest.py), by hand: at 1, 1, 1, 32 the CPU's torch (0.030 ms) is faster than every
    GPU implementation, so a GPU time compared with it would read 0.75x and 0.60x."""
    markdown = bench_report.report(ROOT / "tests" / "data" / "gpu-bench.json", tmp_path)
    assert "GPU NVIDIA H100 80GB HBM3, compute capability 9.0, CUDA driver 13.0, runtime 13.0" in markdown.splitlines()[0]
    cpu, gpu = (section.split("\n\n")[1] for section in markdown.split("## ")[1:3])

    def cells(table):
        header, _, *rows = ([c.strip() for c in line.split("|")[1:-1]] for line in table.splitlines())
        return [dict(zip(header, row)) for row in rows]

    assert [(r["pass"], r["fastlstm-numba_cpu vs fastest baseline"]) for r in cells(cpu)] == [("forward", "1.50x")]
    assert not any("cuda" in column or "cupy" in column for column in cells(cpu)[0])
    assert [(r["pass"], r["batch, time, input, units"], r["fastlstm-cupy vs fastest baseline"],
             r["fastlstm-numba_cuda vs fastest baseline"], r["fastlstm-cupy path, launches"]) for r in cells(gpu)] == [
        ("forward", "1, 1, 1, 32", "2.50x", "2.00x", "persistent, 11"),
        ("forward", "1, 25, 16, 32", "5.00x", "-", "persistent, 11"),
        ("forward", "8, 25, 16, 32", "5.00x", "-", "persistent, 11"),
        ("forward+backward", "1, 1, 1, 32", "2.50x", "2.00x", "persistent, 18"),
    ]
    assert not any(column.startswith(("torch ms", "fastlstm-numba_cpu")) for column in cells(gpu)[0])
    assert [p.name for p in tmp_path.glob("*.png")] == ["forward-float32-d16-u32-gpu.png"]
    assert (tmp_path / "forward-float32-d16-u32-gpu.png").read_bytes().startswith(PNG)


def _keras_layer(backend, layer, step, median_seconds, shape=(1, 1, 1, 50), **more):
    """A benchmark of bench/test_keras_layer.py as it records itself, on Keras's ``backend``."""
    batch, time, input_dim, units = shape
    return {"fullname": f"bench/test_keras_layer.py::test[{step}-{shape}-{layer}]",
            "extra_info": {"implementation": layer, "baseline": layer == "keras", "keras_backend": backend,
                           "step": step, "batch": batch, "time": time, "input_dim": input_dim, "units": units,
                           "versions": {"keras": "3.15.1", backend: f"{backend}-version"}, **more},
            "stats": {"median": median_seconds}}


_EPYC = {"fastlstm_cpu": {"model": "AMD EPYC 7B13 (family 25, model 1)", "vector_extensions": ["avx2"]},
         "python_version": "3.11.9"}


def _keras_layer_run(path, backend, times):
    """Writes ``path``: bench/test_keras_layer.py's run on ``backend``, (step, Keras's seconds, the
    drop-in's) for each of ``times``, fit epochs at the tutorial's shapes."""
    benchmarks = []
    for step, keras_seconds, drop_in_seconds in times:
        shape = (1, 1, 1, 32 if "experiment 1" in step else 50)
        benchmarks += [_keras_layer(backend, "keras", step, keras_seconds, shape),
                       _keras_layer(backend, "fastlstm", step, drop_in_seconds, shape)]
    path.write_text(json.dumps({"machine_info": _EPYC, "benchmarks": benchmarks}))
    return path


def _cells(markdown, section):
    """The rows of the table in the report's ``section``, as {column: cell}."""
    body, = (s for s in markdown.split("## ") if s.startswith(section))
    lines = [line for line in body.splitlines() if line.startswith("|")]
    header, _, *rows = ([c.strip() for c in line.split("|")[1:-1]] for line in lines)
    return [dict(zip(header, row)) for row in rows]


def test_the_keras_layer_runs_of_each_backend_make_one_table_of_the_drop_ins_time_over_keras(tmp_path):
    """One file per Keras backend, as bench/test_keras_layer.py writes them: the ratio is the
    drop-in's median over Keras's own layer's, below 1 where the drop-in is faster, per backend
    and step; a step one backend lacks reads '-' there."""
    runs = [
        _keras_layer_run(tmp_path / "tensorflow.json", "tensorflow", [
            ("train_on_batch", 0.004, 0.001), ("predict_on_batch", 0.002, 0.001),
            ("fit epoch of experiment 1", 0.300, 0.240), ("fit epoch of experiment 5", 0.200, 0.250)]),
        _keras_layer_run(tmp_path / "torch.json", "torch", [
            ("fit epoch of experiment 5", 0.400, 0.100), ("train_on_batch", 0.010, 0.005)]),
        _keras_layer_run(tmp_path / "jax.json", "jax", [
            ("train_on_batch", 0.002, 0.003), ("predict_on_batch", 0.001, 0.001),
            ("fit epoch of experiment 1", 0.100, 0.050), ("fit epoch of experiment 5", 0.080, 0.040)]),
    ]
    markdown = bench_report.report(runs, tmp_path / "out", plots=False)
    title = "The drop-in Keras layer against Keras's own LSTM, per Keras backend"
    assert [(r["step"], r["batch, time, input, units"], r["tensorflow drop-in / Keras"], r["torch drop-in / Keras"],
             r["jax drop-in / Keras"]) for r in _cells(markdown, title)] == [
        ("train_on_batch", "1, 1, 1, 50", "0.25", "0.50", "1.50"),
        ("predict_on_batch", "1, 1, 1, 50", "0.50", "-", "1.00"),
        ("fit epoch of experiment 1", "1, 1, 1, 32", "0.80", "-", "0.50"),
        ("fit epoch of experiment 5", "1, 1, 1, 50", "1.25", "0.25", "0.50"),
    ]
    assert _cells(markdown, title)[3]["torch ms, Keras and drop-in"] == "400.00, 100.00"
    section = markdown.split(f"## {title}\n\n")[1]
    assert section.startswith("fastlstm.keras.LSTM's median time over keras.layers.LSTM's") and \
        "on AMD EPYC 7B13 (family 25, model 1), avx2; Keras 3.15.1, tensorflow tensorflow-version, " \
        "torch torch-version, jax jax-version." in section.splitlines()[0]
    assert markdown.splitlines()[0].startswith(f"Benchmarks of {runs[0]}, {runs[1]}, {runs[2]} (AMD EPYC 7B13")
    assert "## Training" not in markdown  # the fit epochs are the Keras layer's, not the training table's


def test_keras_s_rounds_timed_alternately_with_the_drop_in_s_give_the_ratio_and_say_so(tmp_path):
    """bench/test_keras_layer.py times Keras's rounds between the drop-in's and records their
    median (seconds) in the drop-in's benchmark, which is then the only one per step."""
    path = tmp_path / "tensorflow.json"
    path.write_text(json.dumps({"machine_info": _EPYC, "benchmarks": [
        _keras_layer("tensorflow", "fastlstm", "train_on_batch", 0.001, keras_median=0.004, keras_min=0.003),
        _keras_layer("tensorflow", "fastlstm", "predict_on_batch", 0.003, keras_median=0.002, keras_min=0.002)]}))
    markdown = bench_report.report(path, tmp_path / "out", plots=False)
    title = "The drop-in Keras layer against Keras's own LSTM, per Keras backend"
    assert [(r["step"], r["tensorflow drop-in / Keras"], r["tensorflow ms, Keras and drop-in"])
            for r in _cells(markdown, title)] == [("train_on_batch", "0.25", "4.00, 1.00"),
                                                 ("predict_on_batch", "1.50", "2.00, 3.00")]
    assert "each pair timed alternately, round by round, in the same run" in markdown.split(f"## {title}\n\n")[1]


def test_a_keras_layer_benchmarks_note_is_shown_under_the_table(tmp_path):
    note = "both layers with use_cudnn=False: why"
    path = tmp_path / "torch.json"
    path.write_text(json.dumps({"benchmarks": [
        _keras_layer("torch", layer, "fit epoch of experiment 5", 0.1, note=note) for layer in ("keras", "fastlstm")]}))
    markdown = bench_report.report(path, tmp_path, plots=False)
    assert markdown.rstrip().endswith(f"\n\n- torch, fit epoch of experiment 5: {note}")


def test_the_same_keras_layer_run_given_twice_is_refused(tmp_path):
    path = _keras_layer_run(tmp_path / "jax.json", "jax", [("train_on_batch", 0.002, 0.003)])
    copy = tmp_path / "copy.json"
    copy.write_text(path.read_text())
    result = subprocess.run([sys.executable, "-m", "fastlstm", "bench-report", str(path), str(copy), "--no-plots",
                             "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            cwd=tempfile.gettempdir())
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"fastlstm bench-report: error: {path} and {copy} both hold "
        "bench/test_keras_layer.py::test[train_on_batch-(1, 1, 1, 50)-keras] on Keras's jax backend: "
        "give each run's file once (one per Keras backend)")


def test_a_keras_layer_benchmark_without_its_step_and_shape_is_refused(tmp_path):
    bench = _keras_layer("jax", "keras", "train_on_batch", 0.001)
    del bench["extra_info"]["step"], bench["extra_info"]["units"]
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"benchmarks": [bench]}))
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: .*benchmark 0 of the Keras layer has no "
                                         "'step', 'units' in its 'extra_info'"):
        bench_report.load(path)


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("tensorflow", "keras")),
                    reason="times Keras 3 on TensorFlow with each layer")
def test_a_real_keras_layer_run_records_what_the_table_needs(tmp_path):
    """bench/test_keras_layer.py on TensorFlow, a step and the stateful experiment's fit epoch,
    into the report's table with the CPU the run recorded."""
    path = _run_bench(tmp_path / "tensorflow.json", "test_keras_layer.py",
                      "(b1-t1-d1-u50 and train_on_batch) or (test_fit_epoch and 5)")
    document = json.loads(path.read_text())
    markdown = bench_report.report(path, tmp_path, plots=False)
    rows = _cells(markdown, "The drop-in Keras layer")
    assert [(r["step"], r["batch, time, input, units"]) for r in rows] == [
        ("train_on_batch", "1, 1, 1, 50"), ("fit epoch of experiment 5", "1, 1, 1, 50")]
    assert all(re.fullmatch(r"\d+\.\d\d", r["tensorflow drop-in / Keras"]) for r in rows)
    # Keras's rounds timed between the drop-in's, in the drop-in's benchmark.
    assert [b["extra_info"]["implementation"] for b in document["benchmarks"]] == ["fastlstm", "fastlstm"]
    assert all(0 < b["extra_info"]["keras_min"] <= b["extra_info"]["keras_median"] for b in document["benchmarks"])
    assert "timed alternately, round by round" in markdown.split("## The drop-in")[1]
    assert document["machine_info"]["fastlstm_cpu"]["model"] in markdown.split("## The drop-in")[1].splitlines()[2]


def test_files_from_different_machines_name_each_its_own(tmp_path):
    tensorflow = _keras_layer_run(tmp_path / "tensorflow.json", "tensorflow", [("train_on_batch", 0.002, 0.001)])
    jax = tmp_path / "jax.json"
    document = json.loads(_keras_layer_run(jax, "jax", [("train_on_batch", 0.002, 0.001)]).read_text())
    document["machine_info"]["fastlstm_cpu"]["model"] = "Intel Xeon"
    jax.write_text(json.dumps(document))
    markdown = bench_report.report([tensorflow, jax], tmp_path / "out", plots=False)
    assert markdown.splitlines()[0] == (
        f"Benchmarks of {tensorflow} (AMD EPYC 7B13 (family 25, model 1), avx2; Python 3.11.9), {jax} (Intel Xeon, "
        "avx2; Python 3.11.9); medians, ratios measured in the same run.")
    assert "on AMD EPYC 7B13 (family 25, model 1), avx2 and Intel Xeon, avx2; Keras" in markdown


def test_a_benchmark_in_turn_gives_its_baselines_medians_a_table_of_their_own(tmp_path):
    """bench/test_in_turn.py's benchmark times fastlstm and records the baselines' medians of the
    same rounds: each becomes a baseline's row, compared within the in-turn table alone."""
    in_turn = _bench("fastlstm-numba_cpu", False, 0.002, 1, situation="in turn")
    in_turn["extra_info"]["in_turn_with"] = {"torch": 3.0, "keras": 5.0}
    in_turn["fullname"] = "bench/test_in_turn.py::test_forward[...]"
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"benchmarks": [_bench("fastlstm-numba_cpu", False, 0.001, 1),
                                               _bench("torch", True, 0.004, 1), in_turn]}))
    sections = bench_report.report(path, tmp_path, plots=False).split("## ")
    alone, = (s for s in sections if s.startswith("Kernels, each implementation alone"))
    turn, = (s for s in sections if s.startswith("Kernels in turn"))
    assert [c.strip() for c in alone.splitlines()[4].split("|")[4:7]] == ["1.000", "4.000", "4.00x"]
    assert [c.strip() for c in turn.splitlines()[4].split("|")[4:8]] == ["2.000", "5.000", "3.000", "1.50x"]
    in_turn["extra_info"]["in_turn_with"] = {"torch": "fast"}
    path.write_text(json.dumps({"benchmarks": [in_turn]}))
    with pytest.raises(ValueError, match=r"r.json: .*benchmark 0's 'in_turn_with' gives 'torch' no median in ms"):
        bench_report.load(path)


@pytest.mark.skipif(not all(importlib.util.find_spec(m) for m in ("numba", "torch", "tensorflow", "keras")),
                    reason="times numba_cpu in turn with PyTorch, TensorFlow and Keras")
def test_a_real_in_turn_run_records_each_baselines_median_of_the_same_rounds(tmp_path):
    path = _run_bench(tmp_path / "turn.json", "test_in_turn.py", "b1-t25-d16 and float32")
    benchmarks = json.loads(path.read_text())["benchmarks"]
    assert {(b["extra_info"]["implementation"], b["extra_info"]["pass_name"]) for b in benchmarks} == \
        {("fastlstm-numba_cpu", "forward"), ("fastlstm-numba_cpu", "forward_backward")}
    for b in benchmarks:
        assert b["extra_info"]["situation"] == "in turn" and b["stats"]["rounds"] == 15
        assert set(b["extra_info"]["in_turn_with"]) == {"keras", "tensorflow", "torch"}
        assert all(0 < median < 1e3 for median in b["extra_info"]["in_turn_with"].values())
    rows = [line for line in bench_report.report(path, tmp_path, plots=False).splitlines()
            if line.startswith("| float32")]
    assert len(rows) == 2 and all(line.split("|")[-2].strip().endswith("x") for line in rows)
