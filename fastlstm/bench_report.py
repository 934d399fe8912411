"""``fastlstm bench-report``: a pytest-benchmark JSON file of ``bench/`` as Markdown tables of
ratios and PNG plots.

Kernel benchmarks: per shape, pass and dtype, each implementation's median time and, for fastlstm,
its speed-up over the fastest baseline (Keras, raw TensorFlow, PyTorch) measured in the same run;
at the large shapes, fastlstm's share of the machine's matrix-product throughput measured beside it.
The benchmarks on a GPU (those whose extra_info names a ``gpu``) have a table of their own, which
names the GPU: fastlstm on the GPU against the GPU baselines (cuDNN through PyTorch and Keras),
never against one on the CPU, and for each fastlstm backend its kernel path and device operations
per call. Training benchmarks: per experiment, each implementation's median epoch time and its
speed-up over Keras, and the tutorial's experiments at full length together. Plots: median time
against batch size, one panel per sequence length, the GPU's apart.
"""
import json
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


def _row(path, number, bench):
    """A fastlstm benchmark's extra_info plus ``median`` in ms, or None for another benchmark."""
    bench = _checked(path, f"benchmark {number}", bench, dict)
    info = _checked(path, f"benchmark {number}'s 'extra_info'", bench.get("extra_info", {}), dict)
    if "implementation" not in info:
        return None
    if not isinstance(info.get("baseline"), bool):
        raise _not_benchmarks(path, f"benchmark {number} has no 'baseline' (true or false) in its 'extra_info'")
    stats = bench.get("stats")
    median = stats.get("median") if isinstance(stats, dict) else None
    if not isinstance(median, (int, float)) or isinstance(median, bool):
        raise _not_benchmarks(path, f"benchmark {number} has no 'stats' median in seconds")
    return {**info, "median": 1e3 * median}


def _rows(path, document):
    benchmarks = _checked(path, "'benchmarks'", document.get("benchmarks", []), list)
    rows = [row for row in (_row(path, number, bench) for number, bench in enumerate(benchmarks)) if row]
    if not rows:
        raise ValueError(f"{path} holds no fastlstm benchmarks: write it with "
                         "`pytest bench/ --benchmark-only --benchmark-json=PATH`")
    return rows


def load(path):
    """The benchmarks of a --benchmark-json file: dicts of extra_info plus ``median`` in ms. A file
    that cannot be read, is not JSON or not of pytest-benchmark's shape (an object whose
    'benchmarks' are objects, each fastlstm one with a 'baseline' flag and a 'stats' median) is a
    ValueError that names it and what is wrong."""
    return _rows(path, _read(path))


def _machine(path, document):
    """The processor and Python version of the machine that ran the benchmarks, and where recorded
    (bench/conftest.py) the CPU's vector extensions and numba_cpu's target and register tile."""
    machine = _checked(path, "'machine_info'", document.get("machine_info", {}), dict)
    cpu = _checked(path, "'machine_info' 'cpu'", machine.get("cpu", {}), dict)
    recorded = _checked(path, "'machine_info' 'fastlstm_cpu'", machine.get("fastlstm_cpu", {}), dict)
    processor = recorded.get("model") or cpu.get("brand_raw", machine.get("machine", "?"))
    if recorded.get("vector_extensions"):
        processor += ", " + " ".join(recorded["vector_extensions"])
    target = recorded.get("numba_target")
    if isinstance(target, dict):
        processor += f"; numba_cpu compiled for {target.get('cpu_name', '?')}, tile {target.get('tile', '?')}"
    return f"{processor}; Python {machine.get('python_version', '?')}"


def _situation(row):
    """How a benchmark was timed: "alone" or "side by side" (bench/conftest.py); files written
    before bench/ recorded it hold the benchmarks of bench/test_kernels.py, timed one by one."""
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


def plot(rows, out_dir):
    """PNGs of median time against batch size per implementation, one panel per sequence length,
    for each pass, dtype and (input, units) measured at several batch sizes, the benchmarks on a
    GPU in figures of their own (named ...-gpu.png); those timed side by side are left out, their
    table tells them. Returns their paths."""
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


def report(path, out_dir, plots=True):
    """Writes ``out_dir``/bench-report.md (and the plots); returns the Markdown."""
    document = _read(path)
    rows = _rows(path, document)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    on_gpu = [r for r in rows if r.get("gpu")]
    on_cpu = [r for r in rows if not r.get("gpu")]
    machine = "; ".join([_machine(path, document), *(f"GPU {gpu}" for gpu in _gpus(on_gpu))])
    sections = [f"Benchmarks of {path} ({machine}); medians, ratios measured in the same run."]
    for title, table in (("Kernels, each implementation alone (timed once the others' threads rest)",
                          kernel_table([r for r in on_cpu if _situation(r) == "alone"])),
                         ("Kernels side by side in one process (each call right after every other "
                          "implementation's, their threads still spinning)",
                          kernel_table([r for r in on_cpu if _situation(r) == "side by side"])),
                         ("Kernels on the GPU: fastlstm against the fastest GPU baseline (cuDNN)", kernel_table(on_gpu)),
                         ("Share of the matrix-product throughput (float32 products of 1024 x 1024 on every "
                          "core, the mean of the best of 10 just before and just after each pass)",
                          throughput_table(rows)),
                         ("Training", training_table(rows))):
        if table:
            sections += [f"## {title}", table]
    if plots:
        sections += ["## Plots", *(f"![{p.stem}]({p.name})" for p in plot(rows, out_dir))]
    markdown = "\n\n".join(sections) + "\n"
    (out_dir / "bench-report.md").write_text(markdown)
    return markdown
