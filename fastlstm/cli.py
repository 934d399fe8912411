"""The ``fastlstm`` command: ``fastlstm alphabet`` (the tutorial's experiments),
``fastlstm backends`` (what runs here), ``fastlstm bench-report`` (tables and plots of benchmark
results) and ``fastlstm gpu-check`` (tests and benchmarks on a GPU)."""
import argparse
import concurrent.futures
import contextlib
import ctypes
import dataclasses
import json
import math
import multiprocessing
import os
import pathlib
import signal
import sys
import tempfile
import time

from fastlstm import bench_report, experiments
from fastlstm.activations import ACTIVATIONS
from fastlstm.backends import BackendUnavailable, available_backends
from fastlstm.utils import usable_cores


def backends_report():
    return "\n".join(str(status) for status in available_backends())


class Progress:
    """An in-place 'label: epoch i/n' line on a terminal (``counts`` words the count); silent when
    the output is not one."""

    def __init__(self, label, stream=sys.stderr, counts="epoch {}/{}"):
        self.label, self.stream, self.counts = label, stream, counts
        self.enabled = stream.isatty()
        self.shown_at = 0.0

    def __call__(self, done, total):
        now = time.monotonic()
        if self.enabled and (now - self.shown_at > 0.1 or done == total):
            self.stream.write(f"\r{self.label}: {self.counts.format(done, total)}\033[K")
            self.stream.flush()
            self.shown_at = now

    def close(self):
        if self.enabled:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _describe(result):
    return (f"experiment {result.experiment}, seed {result.seed}, {result.framework} ({result.backend}): "
            f"accuracy {result.accuracy:.2f}%, loss {result.loss:.4f}, {result.seconds:.1f} s"
            + (", DIVERGED" if result.diverged else ""))


def _demonstration_lines(result):
    lines = []
    for name, rows in result.demonstrations.items():
        right = sum(predicted == expected for _, predicted, expected in rows)
        shown = " ".join(f"{pattern}->{predicted}" for pattern, predicted, _ in rows)
        lines.append(f"  {name} ({right}/{len(rows)} right): {shown}")
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


# How many threads OpenMP, OpenBLAS, MKL and Numba start in a process: read once, when each loads.
_ONE_THREAD = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"), "1")


@contextlib.contextmanager
def _environment(values):
    """``os.environ`` with ``values`` set inside the block, restored when the block is left."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


@contextlib.contextmanager
def _blocked(signals):
    """The calling thread with ``signals`` blocked inside the block: held back until it is left."""
    if not hasattr(signal, "pthread_sigmask"):  # Windows has no signal masks
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _die_with(parent):
    """On Linux, has the kernel kill this process when its parent ends, even by SIGKILL, so that no
    worker outlives the main process; elsewhere nothing."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)
        if os.getppid() != parent:  # it ended before the line above
            os._exit(1)


def _start_worker(parent, initializer, initargs):
    _die_with(parent)
    if initializer:
        initializer(*initargs)


def start_in_workers(jobs, function, calls, initializer=None, initargs=()):
    """A ProcessPoolExecutor of ``jobs`` worker processes of one thread each, given
    ``function(*call)`` for every call in ``calls`` at once, and the futures of the calls in their
    order; ``initializer(*initargs)`` runs first in every worker. Shutting it down is the caller's.

    The workers are spawned: forking a process whose BLAS or Numba threads already run is unsafe.
    A spawned worker imports this program's main module, and NumPy and its BLAS with it, before an
    initializer could run, so the one-thread limits go into the environment it starts with. The
    executor starts its processes inside ``submit``, and none later (a worker that dies breaks the
    pool instead of being replaced), so the limits are set around the submissions only and this
    process's environment is restored after them. SIGINT is blocked there too, and so stays blocked
    in the workers: a Ctrl-C in a terminal, which reaches the whole process group, is for this
    process to handle (:func:`stop_children`). On Linux a worker ends with this process.
    """
    executor = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=_start_worker,
                                                      initargs=(os.getpid(), initializer, initargs))
    with _environment(_ONE_THREAD), _blocked({signal.SIGINT}):
        futures = [executor.submit(function, *call) for call in calls]
    return executor, futures


def stop_children(grace=1.0):
    """Ends every process this one started with multiprocessing: SIGTERM, then SIGKILL for any still
    running ``grace`` seconds later."""
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + grace
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            child.kill()
            child.join()


class Interrupted(BaseException):
    """SIGINT or SIGTERM came; ``signal_number`` says which. A BaseException, as KeyboardInterrupt,
    so that no ``except Exception`` takes it for an error."""

    def __init__(self, signal_number):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


def _interrupt(signal_number, frame):
    # Once only: a second signal must not cut short the stopping of the workers.
    for name in (signal.SIGINT, signal.SIGTERM):
        signal.signal(name, signal.SIG_IGN)
    raise Interrupted(signal_number)


@contextlib.contextmanager
def _interruptible():
    """SIGINT and SIGTERM raise Interrupted inside the block; their handlers are restored after it."""
    before = {name: signal.signal(name, _interrupt) for name in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for name, handler in before.items():
            signal.signal(name, handler)


def wait_for(futures, label):
    """The results of ``futures`` in their order, once all are done, with the number done on a
    progress line meanwhile; a worker's exception is raised as soon as it comes back, with the
    worker's traceback as its cause."""
    progress = Progress(label, counts="{}/{} runs done")
    try:
        progress(0, len(futures))
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            future.result()
            progress(done, len(futures))
    finally:
        progress.close()
    return [future.result() for future in futures]


class Workers:
    """fastlstm's runs of every requested experiment and seed in ``jobs`` worker processes, all
    submitted at once so that every core stays busy from one experiment to the next. Each worker
    first warms up as the main process did, so that no run's time includes loading the kernels.
    Leaving the ``with`` block cancels the runs not started yet, and waits for the running ones
    unless it is left by an exception: then the caller stops them (:func:`stop_children`) rather
    than wait up to a minute for them."""

    def __init__(self, args, framework, seeds, jobs):
        options = (args.recurrent_activation, args.epsilon)
        calls = [(number, framework, seed, *options, args.epochs) for number in args.experiment for seed in seeds]
        self.executor, futures = start_in_workers(jobs, experiments.run, calls, experiments.warm_up,
                                                  (args.experiment, framework, *options))
        self.futures = {number: futures[i * len(seeds):(i + 1) * len(seeds)]
                        for i, number in enumerate(args.experiment)}

    def __enter__(self):
        return self

    def __exit__(self, kind, exception, traceback):
        self.executor.shutdown(wait=exception is None, cancel_futures=True)

    def results(self, number):
        """The Results of experiment ``number``, in seed order, once all its runs are done."""
        return wait_for(self.futures[number], f"experiment {number}")

    def finish(self):
        """Waits for every run."""
        for number in self.futures:
            self.results(number)


def _run_here(args, framework, number, seeds):
    """Yields the Results of experiment ``number`` over ``seeds``, run in this process one after
    another with an epoch progress line."""
    for seed in seeds:
        with contextlib.closing(Progress(f"experiment {number}, seed {seed}, {framework.name}")) as progress:
            result = experiments.run(number, framework, seed, args.recurrent_activation, args.epsilon,
                                     args.epochs, progress)
        yield result


def _run_all(args, frameworks, seeds, workers):
    """Every experiment on every framework over ``seeds``, each Result printed as it comes (fastlstm's
    from ``workers`` where there are some): (the Results, the rows of the table)."""
    results, rows = [], []
    for number in args.experiment:
        experiment = experiments.EXPERIMENTS[number]
        print(f"\n== experiment {number}: {experiment.name} "
              f"(published {'-' if math.isnan(experiment.published) else f'{experiment.published:.2f}%'})")
        summaries = []
        for framework in frameworks:
            runs = []
            in_workers = workers and framework is frameworks[0]
            for result in workers.results(number) if in_workers else _run_here(args, framework, number, seeds):
                print(_describe(result), flush=True)
                if len(seeds) == 1:
                    print("\n".join(_demonstration_lines(result)))
                runs.append(result)
            results += runs
            summaries.append(experiments.summarize(runs))
        rows.append((experiment, summaries[0], summaries[1] if args.keras else None))
    return results, rows


def alphabet(args, frameworks):
    """Runs, prints and (with --json) writes the experiments; returns their Results."""
    seeds = range(args.seed, args.seed + args.seeds)
    fastlstm = frameworks[0]
    jobs = min(args.jobs or usable_cores(), len(args.experiment) * len(seeds))
    print(backends_report())
    print(f"fastlstm backend: {fastlstm.backend}; seeds {seeds.start}..{seeds.stop - 1}; "
          f"recurrent_activation {args.recurrent_activation}, Adam epsilon {args.epsilon:g}; "
          + ("runs in this process" if jobs == 1 else f"runs in {jobs} worker processes"))
    warm_up = experiments.warm_up(args.experiment, fastlstm, args.recurrent_activation, args.epsilon)
    print(f"{fastlstm.backend} kernels ready in {warm_up:.1f} s (untimed warm-up, one epoch of each experiment; "
          "a compiling backend compiles its kernels on first use and caches them on disk, later runs load them)",
          flush=True)
    with Workers(args, fastlstm, seeds, jobs) if jobs > 1 else contextlib.nullcontext() as workers:
        if workers and args.keras:
            workers.finish()  # so that Keras's runs, in this process, share no core with fastlstm's
        results, rows = _run_all(args, frameworks, seeds, workers)
    print()
    print(table(rows))
    if args.json:
        write_json(args.json, {"arguments": {k: v for k, v in vars(args).items() if k != "command"},
                               "jobs": jobs, "warm_up_seconds": warm_up,
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


def write_json(path, document):
    """Writes ``document`` to ``path`` as JSON whole or not at all: into a file beside it first,
    renamed over ``path`` once complete, so that no failure or interruption leaves a partial file."""
    partial = f"{path}.{os.getpid()}.partial"
    try:
        with open(partial, "w") as f:
            json.dump(document, f, indent=1)
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
        raise


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


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastlstm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("backends", help="list every backend and whether it works here")
    report = commands.add_parser("bench-report", help="tables of ratios and plots from `pytest bench/ --benchmark-json`")
    report.add_argument("results", metavar="RESULTS.json")
    report.add_argument("--out", default="bench-report", help="the folder for bench-report.md and the plots")
    report.add_argument("--no-plots", action="store_true", help="write the tables only (no matplotlib needed)")
    check = commands.add_parser("gpu-check", help="on a GPU: the device, the GPU tests and the GPU benchmarks against "
                                "cuDNN, into OUTDIR (under 8 minutes); without one, says so")
    check.add_argument("outdir", metavar="OUTDIR", type=_output_directory,
                       help="the folder for the logs, benchmarks.json, bench-report.md and summary.json")
    run = commands.add_parser("alphabet", help="the alphabet experiments of the Keras stateful-LSTM tutorial")
    run.add_argument("--experiment", type=int, nargs="+", choices=sorted(experiments.EXPERIMENTS),
                     default=sorted(experiments.EXPERIMENTS), metavar="N",
                     help="which experiments (1-6 are the tutorial's, 7 its stateless prefix variant); default all")
    run.add_argument("--backend", default="auto", help="fastlstm backend (see `fastlstm backends`); default auto")
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
    run.add_argument("--jobs", type=_positive, metavar="N",
                     help="run fastlstm's runs in N worker processes of one thread each (Keras's stay in this "
                          "process); default the cores this process may use, at most one per run; 1 runs "
                          "them all here, with an epoch progress line")
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
        from fastlstm import gpu_check  # here, not above: it imports this module

        try:
            with _interruptible():
                return gpu_check.gpu_check(args.outdir)
        except Interrupted as e:
            print("fastlstm: interrupted", file=sys.stderr)
            return 128 + e.signal_number
    if args.seed + args.seeds - 1 > LAST_SEED:
        run.error(f"argument --seeds: the last seed, {args.seed + args.seeds - 1}, is over {LAST_SEED}")
    try:
        with _interruptible():
            try:
                chosen = frameworks(args)
            except (ValueError, ImportError, BackendUnavailable) as e:
                run.error(str(e))
            results = alphabet(args, chosen)
    except Interrupted as e:
        print("fastlstm: interrupted", file=sys.stderr)
        return 128 + e.signal_number
    finally:
        stop_children()  # none is left after a complete run; after an exception, the workers still running
    return _divergence_status(results)
