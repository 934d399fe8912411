"""The ``fastlstm`` command."""
import argparse
import string
import time

import numpy as np

from fastlstm.backends import available_backends, get_backend
from fastlstm.ops import lstm_backward, lstm_forward


def backends_report():
    return "\n".join(str(status) for status in available_backends())


def alphabet_demo(backend="auto", units=32, seed=7):
    """One forward and backward pass over the tutorial's 25 pairs A->B .. Y->Z, input [25, 1, 1]."""
    rng = np.random.default_rng(seed)
    codes = np.arange(25, dtype=np.float32)
    x = (codes / 26).reshape(25, 1, 1)
    limit = np.sqrt(6 / (1 + 4 * units))
    kernel = rng.uniform(-limit, limit, (1, 4 * units)).astype(np.float32)
    recurrent_kernel = rng.uniform(-limit, limit, (units, 4 * units)).astype(np.float32)
    bias = np.zeros(4 * units, np.float32)
    bias[units:2 * units] = 1  # unit_forget_bias

    start = time.perf_counter()
    result = lstm_forward(x, kernel, recurrent_kernel, bias, backend=backend)
    grads = lstm_backward(result.cache, dy=np.ones_like(result.outputs))
    seconds = time.perf_counter() - start
    lines = [
        f"alphabet pairs {string.ascii_uppercase[0]}->{string.ascii_uppercase[1]} .. Y->Z: "
        f"x {x.shape}, {units} units, backend {get_backend(backend).__name__.rsplit('.', 1)[-1]}",
        f"forward: outputs {result.outputs.shape}, |h_T| = {np.linalg.norm(result.h):.4f}",
    ]
    lines += [f"backward: |d {name}| = {np.linalg.norm(g):.4f}" for name, g in grads._asdict().items()]
    lines.append(f"forward + backward in {seconds * 1e3:.2f} ms")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastlstm", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("backends", help="list every backend and whether it works here")
    alphabet = commands.add_parser(
        "alphabet", help="the alphabet workload (for now: backends and one forward/backward pass)"
    )
    alphabet.add_argument("--backend", default="auto")
    args = parser.parse_args(argv)

    if args.command == "backends":
        print(backends_report())
    elif args.command == "alphabet":
        print(backends_report())
        print(alphabet_demo(args.backend))
    return 0
