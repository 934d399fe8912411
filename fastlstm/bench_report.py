"""``fastlstm bench-report``: pytest-benchmark JSON files of ``bench/`` as Markdown tables of
ratios and PNG plots. Several files make one report: bench/test_keras_layer.py's runs, one per
Keras backend, in one table.

Kernel benchmarks: per shape, pass and dtype, each implementation's median time and, for fastlstm,
its speed-up over the fastest baseline (Keras, raw TensorFlow, PyTorch) measured in the same run,
in a table per situation (alone, side by side, in turn: bench/conftest.py);
at the large shapes, fastlstm's share of the machine's matrix-product throughput measured beside it.
The benchmarks on a GPU (those whose extra_info names a ``gpu``) have a table of their own, which
names the GPU: fastlstm on the GPU against the GPU baselines (cuDNN through PyTorch and Keras),
never against one on the CPU, and for each fastlstm backend its kernel path and device operations
per call. Training benchmarks: per experiment, each implementation's median epoch time and its
speed-up over Keras, and the tutorial's experiments at full length together. The drop-in Keras
layer (bench/test_keras_layer.py): per Keras backend and step (``train_on_batch`` and
``predict_on_batch`` per shape, a ``fit`` epoch of the tutorial's experiments 1 and 5), the
drop-in's median time over Keras's own LSTM's. Plots: median time against batch size, one panel per
sequence length, the GPU's apart.
"""
import json
import os
import pathlib
from collections import defaultdict

KERNEL_PASSES = {"forward": "forward", "forward_backward": "forward+backward"}


_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number",
               bool: "true or false", type(None): "null"}


def _not_benchmarks(path, problem):
    return ValueError(f"{path}: not a pytest --benchmark-json file: {problem}")


def _checked(path, what, value, kind):
    """``value``, or a ValueError naming ``path`` where it is not of JSON type ``kind`` (dict or list)."""
    if not isinstance(value, kind):
        raise _not_benchmarks(path, f"{what} is {_JSON_TYPES.get(type(value), type(value).__name__)}, "
                                    f"not {_JSON_TYPES[kind]}")
    return value


def _read(path):
    """The JSON object in ``path``; a ValueError naming the file where it cannot be read or is no object."""
    try:
        with open(path, "rb") as f:
            document = json.load(f)
    except OSError as e:
        raise ValueError(f"{path}: {e.strerror}") from e
    except ValueError as e:  # not JSON, or a binary file's bytes that are no UTF-8
        raise _not_benchmarks(path, f"it is not JSON ({e})") from e
    return _checked(path, "it", document, dict)


_KERAS_LAYER_FIELDS = {"step": str, "batch": int, "time": int, "input_dim": int, "units": int}


def _row(path, number, bench):
    """A fastlstm benchmark's extra_info plus ``median`` in ms and, where recorded, pytest's
    ``fullname``; or None for another benchmark."""
    bench = _checked(path, f"benchmark {number}", bench, dict)
    info = _checked(path, f"benchmark {number}'s 'extra_info'", bench.get("extra_info", {}), dict)
    if "implementation" not in info:
        return None
    if not isinstance(info.get("baseline"), bool):
        raise _not_benchmarks(path, f"benchmark {number} has no 'baseline' (true or false) in its 'extra_info'")
    if "keras_backend" in info:
        missing = [name for name, kind in _KERAS_LAYER_FIELDS.items()
                   if not isinstance(info.get(name), kind) or isinstance(info.get(name), bool)]
        if missing:
            raise _not_benchmarks(path, f"benchmark {number} of the Keras layer has no {', '.join(map(repr, missing))} "
                                        "in its 'extra_info' (bench/test_keras_layer.py records them)")
    stats = bench.get("stats")
    median = stats.get("median") if isinstance(stats, dict) else None
    if not isinstance(median, (int, float)) or isinstance(median, bool):
        raise _not_benchmarks(path, f"benchmark {number} has no 'stats' median in seconds")
    fullname = bench.get("fullname")
    return {**info, "median": 1e3 * median, **({"fullname": fullname} if isinstance(fullname, str) else {})}


def _in_turn_rows(path, number, row):
    """``row`` and, for a benchmark timed in turn with the baselines (bench/test_in_turn.py), a row
    of each baseline's median in the same rounds, as if it were a benchmark of its own."""
    with_baselines = _checked(path, f"benchmark {number}'s 'in_turn_with'", row.pop("in_turn_with", {}), dict)
    for name, median in with_baselines.items():
        if not isinstance(median, (int, float)) or isinstance(median, bool):
            raise _not_benchmarks(path, f"benchmark {number}'s 'in_turn_with' gives {name!r} no median in ms")
    benchmark = {key: value for key, value in row.items() if key != "fullname"}  # pytest's name is the row's alone
    return [row, *({**benchmark, "implementation": name, "baseline": True, "median": median}
                   for name, median in with_baselines.items())]


def _rows(path, document):
    benchmarks = _checked(path, "'benchmarks'", document.get("benchmarks", []), list)
    rows = [in_turn for number, bench in enumerate(benchmarks) if (row := _row(path, number, bench))
            for in_turn in _in_turn_rows(path, number, row)]
    if not rows:
        raise ValueError(f"{path} holds no fastlstm benchmarks: write it with "
                         "`pytest bench/ --benchmark-only --benchmark-json=PATH`")
    return rows


def load(path):
    """The benchmarks of a --benchmark-json file: dicts of extra_info plus ``median`` in ms. A file
    that cannot be read, is not JSON or not of pytest-benchmark's shape (an object whose
    'benchmarks' are objects, each fastlstm one with a 'baseline' flag and a 'stats' median, each
    of the Keras layer with its step and shape) is a ValueError that names it and what is wrong."""
    return _rows(path, _read(path))


def _load_all(paths):
    """The benchmarks of every file in ``paths``, as :func:`load`'s, each with its ``file``, and
    each file's document; a ValueError where two files hold the same benchmark (pytest's name, on
    the same Keras backend), which would put two runs in one comparison."""
    rows, documents, seen = [], {}, {}
    for path in paths:
        documents[path] = _read(path)
        for row in _rows(path, documents[path]):
            key = (row.get("fullname"), row.get("keras_backend"))
            if key[0] is not None and key in seen:
                raise ValueError(f"{seen[key]} and {path} both hold {key[0]}"
                                 + (f" on Keras's {key[1]} backend" if key[1] else "")
                                 + ": give each run's file once (one per Keras backend)")
            seen[key] = path
            rows.append({**row, "file": str(path)})
    return rows, documents


def _cpu(path, document):
    """The processor that ran the benchmarks, and where recorded (bench/conftest.py) its vector
    extensions and numba_cpu's target and register tile."""
    machine = _checked(path, "'machine_info'", document.get("machine_info", {}), dict)
    cpu = _checked(path, "'machine_info' 'cpu'", machine.get("cpu", {}), dict)
    recorded = _checked(path, "'machine_info' 'fastlstm_cpu'", machine.get("fastlstm_cpu", {}), dict)
    processor = recorded.get("model") or cpu.get("brand_raw", machine.get("machine", "?"))
    if recorded.get("vector_extensions"):
        processor += ", " + " ".join(recorded["vector_extensions"])
    target = recorded.get("numba_target")
    if isinstance(target, dict):
        processor += f"; numba_cpu compiled for {target.get('cpu_name', '?')}, tile {target.get('tile', '?')}"
    return processor


def _machine(path, document):
    """:func:`_cpu`'s processor and the Python version of the machine that ran the benchmarks."""
    return f"{_cpu(path, document)}; Python {document.get('machine_info', {}).get('python_version', '?')}"


def _situation(row):
    """How a benchmark was timed: "alone", "side by side" or "in turn" (bench/conftest.py); files
    written before bench/ recorded it hold the benchmarks of bench/test_kernels.py, timed one by one."""
    return row.get("situation", "alone")


def _gpus(rows):
    """The GPUs that ran ``rows`` (benchmarks on a GPU), each as its name, compute capability and
    CUDA versions ('?' where one was not recorded)."""
    return sorted({f"{r['gpu']}, compute capability {r.get('compute_capability') or '?'}, "
                   f"CUDA driver {r.get('cuda_driver') or '?'}, runtime {r.get('cuda_runtime') or '?'}"
                   for r in rows})


def _speedup(time, baselines):
    return f"{min(baselines) / time:.2f}x" if baselines else "-"


def _table(header, body):
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def kernel_table(rows):
    """Markdown: one row per (pass, shape, dtype); medians in ms, fastlstm speed-ups over the fastest
    baseline, and where recorded (on a GPU) each fastlstm backend's kernel path and device
    operations per call. ``rows`` run on one kind of device, all on the CPU or all on a GPU."""
    kernels = [r for r in rows if r.get("pass_name") in KERNEL_PASSES]
    if not kernels:
        return ""
    names = sorted({r["implementation"] for r in kernels}, key=lambda n: (not n.startswith("fastlstm"), n))
    groups = defaultdict(dict)
    for r in kernels:
        key = (r["dtype"], r["pass_name"], r["batch"], r["time"], r["input_dim"], r["units"])
        groups[key][r["implementation"]] = r
    fastlstm = [n for n in names if n.startswith("fastlstm")]
    launched = [n for n in fastlstm if any("launches" in r for r in kernels if r["implementation"] == n)]
    header = ["dtype", "pass", "batch, time, input, units", *(f"{n} ms" for n in names),
              *(f"{n} vs fastest baseline" for n in fastlstm), *(f"{n} path, launches" for n in launched)]
    body = []
    for key in sorted(groups, key=lambda k: (k[0], k[1], k[3], k[2], k[5])):
        found = groups[key]
        baselines = [r["median"] for r in found.values() if r["baseline"]]
        body.append([key[0], KERNEL_PASSES[key[1]], ", ".join(map(str, key[2:])),
                     *(f"{found[n]['median']:.3f}" if n in found else "-" for n in names),
                     *(_speedup(found[n]["median"], baselines) if n in found else "-" for n in fastlstm),
                     *(f"{found[n]['path']}, {found[n]['launches']}" if "launches" in found.get(n, {}) else "-"
                       for n in launched)])
    return _table(header, body)


def flops(pass_name, batch, time, input_dim, units):
    """The floating-point operations of a layer's products in the pass: ``[x_t, h_{t-1}] @ [kernel;
    recurrent_kernel]`` over every step forward, and twice as many backward (dh, the weight
    gradients, dx)."""
    forward = 2 * batch * time * (input_dim + units) * 4 * units
    return forward * (3 if pass_name == "forward_backward" else 1)


def throughput_table(rows):
    """Markdown: for each fastlstm benchmark timed alone that recorded the machine's matrix-product
    throughput (bench/conftest.py, the large shapes), its products' GFLOP/s and their share of it."""
    measured = [r for r in rows if r.get("matrix_product_gflops") and r.get("pass_name") in KERNEL_PASSES
                and _situation(r) == "alone"]
    if not measured:
        return ""
    header = ["implementation", "pass", "batch, time, input, units", "GFLOP", "median ms", "GFLOP/s",
              "matrix product GFLOP/s", "share"]
    body = []
    for r in sorted(measured, key=lambda r: (r["implementation"], r["pass_name"], r["time"], r["batch"], r["units"])):
        gflop = flops(*(r[k] for k in ("pass_name", "batch", "time", "input_dim", "units"))) / 1e9
        rate = gflop / (r["median"] / 1e3)
        body.append([r["implementation"], KERNEL_PASSES[r["pass_name"]],
                     ", ".join(str(r[k]) for k in ("batch", "time", "input_dim", "units")), f"{gflop:.2f}",
                     f"{r['median']:.1f}", f"{rate:.1f}", f"{r['matrix_product_gflops']:.1f}",
                     f"{100 * rate / r['matrix_product_gflops']:.0f} %"])
    return _table(header, body)


def training_table(rows):
    """Markdown: one row per experiment and kind of run; medians in ms, speed-ups over Keras."""
    training = [r for r in rows if "experiment" in r]
    if not training:
        return ""
    names = sorted({r["implementation"] for r in training}, key=lambda n: (not n.startswith("fastlstm"), n))
    groups = defaultdict(dict)
    for r in training:
        groups[(r["experiment"], "full length" if "epochs" in r else "one epoch")][r["implementation"]] = r
    fastlstm = [n for n in names if n.startswith("fastlstm")]
    header = ["experiment", "run", *(f"{n} ms" for n in names), *(f"{n} vs Keras" for n in fastlstm)]
    body = [[str(key[0]), key[1], *(f"{groups[key][n]['median']:.2f}" if n in groups[key] else "-" for n in names),
             *(_speedup(groups[key][n]["median"], [r["median"] for r in groups[key].values() if r["baseline"]])
               if n in groups[key] else "-" for n in fastlstm)]
            for key in sorted(groups)]
    return "\n\n".join([_table(header, body), *_tutorial_totals(training)])


def _tutorial_totals(training):
    """A line per implementation: the tutorial's experiments at full length together, the sum of
    their medians and of their training seconds (the rest evaluates and runs the demonstrations)."""
    full = defaultdict(list)
    for r in training:
        if r.get("tutorial") and "epochs" in r:
            full[r["implementation"]].append(r)
    lines = []
    for name, found in sorted(full.items()):
        found.sort(key=lambda r: r["experiment"])
        numbers = ("experiments " if len(found) > 1 else "experiment ") + ", ".join(str(r["experiment"]) for r in found)
        lines.append(f"{name}, the tutorial's {numbers} at full length together: "
                     f"{sum(r['median'] for r in found) / 1e3:.2f} s, "
                     f"{sum(r['training_seconds'] for r in found):.2f} s of it training.")
    return lines


KERAS_BACKENDS = ("tensorflow", "torch", "jax")  # the table's order; any other follows, by name
_KERAS_STEPS = ("train_on_batch", "predict_on_batch")  # the table's order; the fit epochs follow, by name


def _in_order(name, order):
    """A sort key: ``name``'s place in ``order``, any name not in it after them, by name."""
    return (order.index(name) if name in order else len(order), name)


def _versions(rows):
    """"Keras 3.15.1, tensorflow 2.20.0, ...": the versions ``rows`` recorded, Keras's first."""
    found = defaultdict(set)
    for r in rows:
        for package, version in (r.get("versions") or {}).items():
            found[package].add(str(version))
    names = sorted(found, key=lambda n: _in_order(n, ("keras", *KERAS_BACKENDS)))
    return ", ".join(f"{'Keras' if n == 'keras' else n} {' and '.join(sorted(found[n]))}" for n in names)


def keras_layer_table(rows, cpu):
    """Markdown: bench/test_keras_layer.py's benchmarks among ``rows`` (one run per Keras backend,
    on the processor ``cpu``), a row per step and shape (batch, time, input, units): per Keras
    backend, the drop-in's median time over Keras's own LSTM's (below 1: the drop-in is faster),
    then both medians in ms; under the table, the note of each benchmark that recorded one."""
    layer = [r for r in rows if "keras_backend" in r]
    if not layer:
        return ""
    backends = sorted({r["keras_backend"] for r in layer}, key=lambda b: _in_order(b, KERAS_BACKENDS))
    groups = defaultdict(lambda: defaultdict(dict))
    for r in layer:
        key = (r["step"], r["batch"], r["time"], r["input_dim"], r["units"])
        pair = groups[key][r["keras_backend"]]
        pair["keras" if r["baseline"] else "drop-in"] = r["median"]
        if "keras_median" in r:  # Keras's rounds timed alternately with the drop-in's, in its benchmark
            pair["keras"] = 1e3 * r["keras_median"]
    header = ["step", "batch, time, input, units", *(f"{b} drop-in / Keras" for b in backends),
              *(f"{b} ms, Keras and drop-in" for b in backends)]
    body = []
    for key in sorted(groups, key=lambda k: (*_in_order(k[0], _KERAS_STEPS), *k[1:])):
        pairs = [groups[key].get(b, {}) for b in backends]
        body.append([key[0], ", ".join(map(str, key[1:])),
                     *(f"{p['drop-in'] / p['keras']:.2f}" if len(p) == 2 else "-" for p in pairs),
                     *(", ".join(f"{p[n]:.2f}" if n in p else "-" for n in ("keras", "drop-in")) if p else "-"
                       for p in pairs)])
    versions = _versions(layer)
    alternate = all("keras_median" in r for r in layer)
    intro = (f"fastlstm.keras.LSTM's median time over keras.layers.LSTM's in the same model, each pair timed "
             f"{'alternately, round by round, ' if alternate else ''}in the same run (below 1: the drop-in is "
             f"faster), on {cpu}{'; ' + versions if versions else ''}.")
    notes = sorted({f"- {r['keras_backend']}, {r['step']}: {r['note']}" for r in layer if r.get("note")})
    return "\n\n".join([intro, _table(header, body), *(["\n".join(notes)] if notes else [])])


def plot(rows, out_dir):
    """PNGs of median time against batch size per implementation, one panel per sequence length,
    for each pass, dtype and (input, units) measured at several batch sizes, the benchmarks on a
    GPU in figures of their own (named ...-gpu.png); those timed side by side or in turn are left
    out, their tables tell them. Returns their paths."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("bench-report's plots need matplotlib: pip install 'fastlstm[bench]' "
                          "(or pass --no-plots)") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    series = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r.get("pass_name") in KERNEL_PASSES and _situation(r) == "alone":
            figure = (r["pass_name"], r["dtype"], r["input_dim"], r["units"], bool(r.get("gpu")))
            series[figure][(r["time"], r["implementation"])].append((r["batch"], r["median"]))
    paths = []
    for (pass_name, dtype, input_dim, units, gpu), lines in sorted(series.items()):
        if max(len(points) for points in lines.values()) < 2:
            continue  # a single batch size is no curve
        times = sorted({time for time, _ in lines})
        fig, axes = plt.subplots(1, len(times), figsize=(5 * len(times), 4), squeeze=False)
        for ax, time in zip(axes[0], times):
            for (t, name), points in sorted(lines.items()):
                if t == time:
                    batches, medians = zip(*sorted(points))
                    ax.plot(batches, medians, marker="o", label=name, linestyle="-" if "fastlstm" in name else "--")
            ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="median time (ms)",
                   title=f"{time} time step{'s' if time > 1 else ''}")
            ax.set_xticks(sorted({b for (t, _), points in lines.items() if t == time for b, _ in points}))
            ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{KERNEL_PASSES[pass_name]}, {dtype}, input {input_dim}, units {units}{', on the GPU' * gpu}")
        fig.tight_layout()
        path = pathlib.Path(out_dir) / f"{pass_name}-{dtype}-d{input_dim}-u{units}{'-gpu' * gpu}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


def report(paths, out_dir, plots=True):
    """Writes ``out_dir``/bench-report.md (and the plots) of the benchmark file ``paths``, or of
    several (e.g. bench/test_keras_layer.py's runs, one per Keras backend); returns the Markdown."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    rows, documents = _load_all(paths)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    layer = [r for r in rows if "keras_backend" in r]
    rows = [r for r in rows if "keras_backend" not in r]
    on_gpu = [r for r in rows if r.get("gpu")]
    on_cpu = [r for r in rows if not r.get("gpu")]
    machines = {path: _machine(path, document) for path, document in documents.items()}
    gpus = [f"GPU {gpu}" for gpu in _gpus(on_gpu)]
    if len(set(machines.values())) == 1:
        sources = f"{', '.join(map(str, paths))} ({'; '.join([*set(machines.values()), *gpus])})"
    else:
        sources = "; ".join([", ".join(f"{path} ({machine})" for path, machine in machines.items()), *gpus])
    sections = [f"Benchmarks of {sources}; medians, ratios measured in the same run."]
    layer_cpu = " and ".join(sorted({_cpu(path, documents[path]) for path in paths
                                     if any(r["file"] == str(path) for r in layer)}))
    for title, table in (("Kernels, each implementation alone (timed once the others' threads rest)",
                          kernel_table([r for r in on_cpu if _situation(r) == "alone"])),
                         ("Kernels side by side in one process (each call right after every other "
                          "implementation's, their threads still spinning)",
                          kernel_table([r for r in on_cpu if _situation(r) == "side by side"])),
                         ("Kernels in turn (fastlstm and the baselines round by round in one process, each "
                          "call once the others' threads rest; medians of the same rounds)",
                          kernel_table([r for r in on_cpu if _situation(r) == "in turn"])),
                         ("Kernels on the GPU: fastlstm against the fastest GPU baseline (cuDNN)", kernel_table(on_gpu)),
                         ("Share of the matrix-product throughput (float32 products of 1024 x 1024 on every "
                          "core, the mean of the best of 10 just before and just after each pass)",
                          throughput_table(rows)),
                         ("Training", training_table(rows)),
                         ("The drop-in Keras layer against Keras's own LSTM, per Keras backend",
                          keras_layer_table(layer, layer_cpu))):
        if table:
            sections += [f"## {title}", table]
    if plots:
        sections += ["## Plots", *(f"![{p.stem}]({p.name})" for p in plot(rows, out_dir))]
    markdown = "\n\n".join(sections) + "\n"
    (out_dir / "bench-report.md").write_text(markdown)
    return markdown
