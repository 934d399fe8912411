"""The fastlstm command: fastlstm alphabet (the tutorial's experiments), fastlstm backends (what
runs here), fastlstm bench-report (tables and plots of benchmark results) and fastlstm gpu-check
(tests and benchmarks on a GPU)."""
import argparse
import collections
import contextlib
import dataclasses
import itertools
import math
import os
import pathlib
import sys
import tempfile

from fastlstm import __version__, bench_report, cluster, experiments, gpu_check
from fastlstm.activations import ACTIVATIONS
from fastlstm.backends import BackendUnavailable, available_backends
from fastlstm.utils import Progress, usable_cores, write_json
from fastlstm.workers import Interrupted, WorkerPool, interruptible


def backends_report():
    return "\n".join(str(status) for status in available_backends())


def _describe(result):
    return (f"experiment {result.experiment}, seed {result.seed}, {result.framework} ({result.backend}): "
            f"accuracy {result.accuracy:.2f}%, loss {result.loss:.4f}, {result.seconds:.1f} s"
            + (", DIVERGED" if result.diverged else ""))


WRONG_SHOWN = 20  # distinct wrong predictions listed per demonstration, so that an experiment fits a screen


def _demonstration_lines(result):
    """A line per demonstration: how many predictions are right, and the wrong ones, each distinct
    one once with its count (every prediction is in --json)."""
    lines = []
    for name, rows in result.demonstrations.items():
        wrong = collections.Counter(f"{pattern}->{predicted}" for pattern, predicted, expected in rows
                                    if predicted != expected)
        line = f"  {name} ({len(rows) - wrong.total()}/{len(rows)} right)"
        if wrong:
            shown = [text if count == 1 else f"{text} x{count}"
                     for text, count in itertools.islice(wrong.items(), WRONG_SHOWN)]
            more = len(wrong) - len(shown)
            line += "; wrong: " + ", ".join(shown) + (f", and {more} more" if more else "")
        lines.append(line)
    return lines


def _accuracy_cell(summary):
    if summary is None:
        return "-"
    cell = f"{summary['mean']:.2f}"
    if summary["runs"] > 1:
        cell += f" [{summary['min']:.2f}, {summary['max']:.2f}]"
    if summary["diverged"]:
        cell += f", {summary['diverged']} diverged"
    return cell


def _reaching_cell(summary, published):
    if summary is None or math.isnan(published):
        return "-"
    return f"{summary['reaching_published']}/{summary['runs']}"


def table(rows):
    """The closing table: one row per experiment, ``rows`` as (Experiment, fastlstm summary,
    Keras summary or None)."""
    header = ["#", "experiment", "published %", "fastlstm %", "reach", "Keras %", "reach",
              "fastlstm s", "Keras s", "speed-up"]
    body = []
    for experiment, ours, theirs in rows:
        speedup = f"{theirs['seconds'] / ours['seconds']:.1f}x" if theirs else "-"
        body.append([
            str(experiment.number), experiment.name,
            "-" if math.isnan(experiment.published) else f"{experiment.published:.2f}",
            _accuracy_cell(ours), _reaching_cell(ours, experiment.published),
            _accuracy_cell(theirs), _reaching_cell(theirs, experiment.published),
            f"{ours['seconds']:.2f}", f"{theirs['seconds']:.2f}" if theirs else "-", speedup,
        ])
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, body)])


def frameworks(args):
    """fastlstm on the chosen backend, and Keras 3 beside it when asked for."""
    chosen = [experiments.FastLSTM(args.backend)]
    if args.keras:
        try:
            chosen.append(experiments.Keras())
        except ImportError as e:
            raise ImportError(f"--keras needs Keras 3 and TensorFlow: pip install 'fastlstm[keras]' ({e})") from e
    return chosen


def _run_here(args, framework, number, seeds):
    """Yields the Results of experiment ``number`` over ``seeds``, run in this process one after
    another with an epoch progress line."""
    for seed in seeds:
        with contextlib.closing(Progress(f"experiment {number}, seed {seed}, {framework.name}")) as progress:
            result = experiments.run(number, framework, seed, args.recurrent_activation, args.epsilon,
                                     args.epochs, args.sequence, progress)
        yield result


def _run_all(args, frameworks, seeds, in_workers):
    """Every experiment on every framework over ``seeds``, each Result printed as it comes, fastlstm's
    taken from ``in_workers`` (an iterator of its Results in order) where given: (the Results, the
    rows of the table)."""
    results, rows = [], []
    for number in args.experiment:
        experiment = experiments.setup(number, sequence=args.sequence)[0]  # no published accuracy off the alphabet
        print(f"\n== experiment {number}: {experiment.name} "
              f"(published {'-' if math.isnan(experiment.published) else f'{experiment.published:.2f}%'})")
        summaries = []
        for framework in frameworks:
            runs = []
            from_workers = in_workers and framework is frameworks[0]
            for result in itertools.islice(in_workers, len(seeds)) if from_workers \
                    else _run_here(args, framework, number, seeds):
                print(_describe(result), flush=True)
                if len(seeds) == 1:
                    print("\n".join(_demonstration_lines(result)))
                runs.append(result)
            results += runs
            summaries.append(experiments.summarize(runs))
        rows.append((experiment, summaries[0], summaries[1] if args.keras else None))
    return results, rows


def _count(number, noun):
    return f"{number} {noun}" + ("" if number == 1 else "s")


def _executor(dask, jobs, warm_up_arguments):
    """Where fastlstm's runs go, as a context manager: the Dask cluster ``dask`` where given, else
    ``jobs`` worker processes, each having run the warm-up first, or none for this process."""
    if dask:
        return contextlib.nullcontext(dask.executor(experiments.warm_up, warm_up_arguments))
    if jobs > 1:
        return WorkerPool(jobs, experiments.warm_up, warm_up_arguments)
    return contextlib.nullcontext()


def alphabet(args, frameworks):
    """Runs, prints and (with --json) writes the experiments; returns their Results."""
    seeds = range(args.seed, args.seed + args.seeds)
    fastlstm = frameworks[0]
    options = (args.recurrent_activation, args.epsilon)
    warm_up_arguments = (args.experiment, fastlstm, *options, args.sequence)
    runs = [experiments.Run(number, fastlstm, seed, *options, args.epochs, args.sequence)
            for number in args.experiment for seed in seeds]
    with contextlib.ExitStack() as stack:
        # Connected before the first line, so that a scheduler that does not answer fails the command at once.
        dask = args.scheduler and stack.enter_context(cluster.Cluster(args.scheduler, fastlstm.backend))
        jobs = dask.threads if dask else min(args.jobs or usable_cores(), len(runs))
        print(backends_report())
        print(f"fastlstm backend: {fastlstm.backend}; seeds {seeds.start}..{seeds.stop - 1}; "
              + ("" if args.sequence == experiments.ALPHABET else f"sequence {args.sequence!r}; ")
              + f"recurrent_activation {args.recurrent_activation}, Adam epsilon {args.epsilon:g}; "
              + (f"runs on the Dask cluster at {dask.address}: {_count(dask.workers, 'worker')}, "
                 f"{_count(jobs, 'thread')}" if dask
                 else "runs in this process" if jobs == 1 else f"runs in {jobs} worker processes"))
        warm_up = experiments.warm_up(*warm_up_arguments)
        print(f"{fastlstm.backend} kernels ready in {warm_up:.1f} s (untimed warm-up, one epoch of each experiment; "
              "a compiling backend compiles its kernels on first use and caches them on disk, later runs load them)",
              flush=True)
        executor = stack.enter_context(_executor(dask, jobs, warm_up_arguments))
        in_workers = executor and experiments.run_many(runs, executor)
        if in_workers and args.keras:
            in_workers = iter(list(in_workers))  # so that Keras's runs, in this process, share no core with fastlstm's
        results, rows = _run_all(args, frameworks, seeds, in_workers)
        on_cluster = {"scheduler": dask.address, "workers": dask.workers} if dask else {}
    print()
    print(table(rows))
    if args.json:
        write_json(args.json, {"arguments": {k: v for k, v in vars(args).items() if k != "command"},
                               "jobs": jobs, **on_cluster, "warm_up_seconds": warm_up,
                               "results": [dataclasses.asdict(r) for r in results],
                               "summaries": [{"experiment": e.number, "fastlstm": o, "keras": k} for e, o, k in rows]})
        print(f"wrote {args.json}")
    return results


def _divergence_status(results):
    """1 after a line that names the runs whose loss turned NaN or infinite, 0 if none did."""
    diverged = [f"experiment {r.experiment}, seed {r.seed} ({r.framework})" for r in results if r.diverged]
    if diverged:
        print(f"fastlstm: diverged (loss not finite): {'; '.join(diverged)}", file=sys.stderr)
    return 1 if diverged else 0


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


LAST_SEED = 2**32 - 1  # NumPy's RandomState takes seeds 0 to 2**32 - 1


def _seed(text):
    value = int(text)
    if not 0 <= value <= LAST_SEED:
        raise argparse.ArgumentTypeError(f"must be 0 to {LAST_SEED} (NumPy's seeds), got {value}")
    return value


def _scheduler(text):
    """A Dask scheduler's address, or local:N with N at least 1."""
    if text.startswith(cluster.LOCAL):
        count = text[len(cluster.LOCAL):]
        if not (count.isdigit() and int(count) >= 1):
            raise argparse.ArgumentTypeError(f"local:N needs N, the worker processes, of at least 1, got {text!r}")
    elif not text:
        raise argparse.ArgumentTypeError("needs a scheduler's address, e.g. tcp://10.0.0.5:8786, or local:N")
    return text


def _finite_positive(text):
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, got {text}")
    return value


def _writable_file(text):
    """A path a file can be written at, checked before any run rather than after all of them."""
    folder = os.path.abspath(os.path.dirname(text))
    if not os.path.basename(text) or os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} names a directory, not a file")
    if not os.path.isdir(folder):
        raise argparse.ArgumentTypeError(f"the directory {folder} does not exist")
    try:
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write in {folder}: {e.strerror}") from e
    return text


def _output_directory(text):
    """A directory to write in, made if missing, checked before any run rather than after."""
    try:
        os.makedirs(text, exist_ok=True)
        tempfile.TemporaryFile(dir=text).close()
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot write in {text}: {e.strerror}") from e
    return pathlib.Path(text)


def _command(commands, name, summary):
    """Subcommand ``name``, with ``summary`` on its line in fastlstm --help and atop its own --help."""
    return commands.add_parser(name, help=summary, description=summary)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastlstm", description=__doc__)
    parser.add_argument("--version", action="version", version=f"fastlstm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _command(commands, "backends", "list every backend and whether it works here")
    report = _command(commands, "bench-report",
                      "tables of ratios and plots from the output of pytest bench/ --benchmark-json")
    report.add_argument("results", metavar="RESULTS.json", nargs="+",
                        help="one or more files, e.g. bench/test_keras_layer.py's runs, one per Keras backend")
    report.add_argument("--out", default="bench-report", help="the folder for bench-report.md and the plots")
    report.add_argument("--no-plots", action="store_true", help="write the tables only (no matplotlib needed)")
    check = _command(commands, "gpu-check", "on a GPU: the device, the GPU tests and the GPU benchmarks against "
                     "cuDNN, into OUTDIR (under 8 minutes); without one, says so")
    check.add_argument("outdir", metavar="OUTDIR", type=_output_directory,
                       help="the folder for the logs, benchmarks.json, bench-report.md and summary.json")
    run = _command(commands, "alphabet", "the alphabet experiments of the Keras stateful-LSTM tutorial")
    run.add_argument("--experiment", type=int, nargs="+", choices=sorted(experiments.EXPERIMENTS),
                     default=sorted(experiments.EXPERIMENTS), metavar="N",
                     help="which experiments: 1-6 are the tutorial's, 7 its stateless prefix variant, 8-11 what "
                          "its readers asked for (8: stateful, several series side by side; 9: three characters "
                          "out; 10 and 11 their variants, run beside 8 and 9: rows shuffled, encoder-decoder); "
                          "default all")
    run.add_argument("--sequence", default=experiments.ALPHABET, metavar="TEXT",
                     help="run the experiments on this sequence of symbols instead of the alphabet (its distinct "
                          "symbols are the classes, what follows each window its target), e.g. aaaabbbccd")
    run.add_argument("--backend", default="auto", help="fastlstm backend (see: fastlstm backends); default auto")
    run.add_argument("--seeds", type=_positive, default=1, metavar="K", help="run K seeds and report the spread")
    run.add_argument("--seed", type=_seed, default=experiments.DEFAULT_SEED,
                     help=f"first seed, 0 to {LAST_SEED} (default 7, the tutorial's)")
    run.add_argument("--keras", action="store_true", help="run the same experiments under Keras 3 beside fastlstm")
    run.add_argument("--recurrent-activation", default="sigmoid", choices=sorted(ACTIVATIONS),
                     help="hard_sigmoid_keras2 with --epsilon 1e-8 reproduces the tutorial's 2017 Keras 2 setting")
    run.add_argument("--epsilon", type=_finite_positive, default=1e-7,
                     help="Adam epsilon, above 0 (Keras 3: 1e-7; Keras 2: 1e-8)")
    run.add_argument("--epochs", type=_positive, help="override every experiment's number of epochs (for quick runs)")
    run.add_argument("--json", type=_writable_file, metavar="PATH",
                     help="write every figure to PATH as JSON (whole, once every run is done)")
    runners = run.add_mutually_exclusive_group()
    runners.add_argument("--jobs", type=_positive, metavar="N",
                         help="run fastlstm's runs in N worker processes of one thread each (Keras's stay in this "
                              "process); default the cores this process may use, at most one per run; 1 runs "
                              "them all here, with an epoch progress line")
    runners.add_argument("--scheduler", type=_scheduler, metavar="ADDRESS",
                         help="run fastlstm's runs on the Dask cluster of this scheduler, e.g. tcp://10.0.0.5:8786, "
                              "whose workers have fastlstm installed (the results are those of --jobs 1); local:N "
                              "starts one of N worker processes of one thread each here; needs the cluster extra")
    args = parser.parse_args(argv)

    if args.command == "backends":
        print(backends_report())
        return 0
    if args.command == "bench-report":
        try:
            print(bench_report.report(args.results, args.out, plots=not args.no_plots))
        except (OSError, ValueError, ImportError) as e:
            report.error(str(e))
        print(f"wrote {args.out}/bench-report.md")
        return 0
    if args.command == "gpu-check":
        try:
            with interruptible():
                return gpu_check.gpu_check(args.outdir)
        except Interrupted as e:
            print("fastlstm: interrupted", file=sys.stderr)
            return 128 + e.signal_number
    if args.seed + args.seeds - 1 > LAST_SEED:
        run.error(f"argument --seeds: the last seed, {args.seed + args.seeds - 1}, is over {LAST_SEED}")
    args.experiment = experiments.with_variants(args.experiment)
    try:
        experiments.check_sequence(args.sequence, args.experiment)
    except ValueError as e:
        run.error(f"argument --sequence: {e}")
    try:
        with interruptible():
            try:
                chosen = frameworks(args)
            except (ValueError, ImportError, BackendUnavailable) as e:
                run.error(str(e))
            results = alphabet(args, chosen)
    except cluster.ClusterError as e:
        print(f"fastlstm alphabet: error: --scheduler {args.scheduler}: {e}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print("fastlstm: interrupted", file=sys.stderr)
        return 128 + e.signal_number
    return _divergence_status(results)
