"""Waiting for this process's other threads to come to rest before a benchmark: after a call,
PyTorch's and TensorFlow's thread pools and OpenBLAS's threads keep spinning for a while on the
cores that the next implementation timed needs, and an implementation timed then runs up to
several times slower than alone (bench/test_side_by_side.py times that situation on purpose).

Linux tells each thread's time on a CPU in nanoseconds (``/proc/self/task/*/schedstat``); elsewhere
this waits a fixed time, longer than those threads spin.
"""
import os
import threading
import time

WINDOW_SECONDS = 0.02  # other threads at rest: together on a CPU under BUSY_FRACTION of this window
BUSY_FRACTION = 0.05
TIMEOUT_SECONDS = 5.0  # a thread that never rests (another program's work, say) is waited for no longer
FALLBACK_SECONDS = 0.5  # without schedstat: OpenBLAS's threads spin about 0.1 s, the frameworks' less


def _cpu_nanoseconds():
    """{thread id: nanoseconds on a CPU} for this process's threads but the calling one; None
    where the system does not tell."""
    me = threading.get_native_id()
    times = {}
    try:
        threads = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in threads:
        if int(tid) == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                times[tid] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # the thread ended meanwhile, or the kernel keeps no such count
    return times


def wait_for_other_threads():
    """Returns once this process's other threads have been at rest for a window (see above), or
    after TIMEOUT_SECONDS; returns the seconds it waited."""
    start = time.perf_counter()
    before = _cpu_nanoseconds()
    if before is None:
        time.sleep(FALLBACK_SECONDS)
        return time.perf_counter() - start
    while time.perf_counter() - start < TIMEOUT_SECONDS:
        time.sleep(WINDOW_SECONDS)
        after = _cpu_nanoseconds()
        busy = sum(after[tid] - before[tid] for tid in after.keys() & before.keys())
        if busy < BUSY_FRACTION * WINDOW_SECONDS * 1e9:
            break
        before = after
    return time.perf_counter() - start
