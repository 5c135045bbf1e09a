"""
How bench.py measures: the median wall time of a call, and the peak memory of a training step (CUDA's allocator,
or on Linux the resident set of a fresh process), with the helpers they need.
"""

import gc
import multiprocessing
import os
import re
import statistics
import time
from pathlib import Path

import torch


def proc_status(key, path="/proc/self/status"):
    """A value in kB from /proc/self/status (Linux), or None elsewhere."""
    try:
        return int(re.search(rf"{key}:\s+(\d+)", Path(path).read_text()).group(1))
    except (OSError, AttributeError):
        return None


def proc_meminfo(key):
    return proc_status(key, "/proc/meminfo")


def timed(fn, device, warmup, repeats):
    """Median wall time of fn() over repeats, after warmup calls; synchronised on CUDA."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def peak_memory_mb(make_step, args, device):
    """Memory that one training step, the function make_step(*args) returns, needs above what its inputs and weights
    hold, in a steady state: measured over the second step, after one warm-up step. CUDA: max_memory_allocated, the
    allocator's view. CPU: the growth of the resident-set high-water mark (Linux VmHWM) in a fresh process whose
    glibc returns every block over 128 KiB to the system when it is freed (MALLOC_MMAP_THRESHOLD_), so the
    resident set follows what is live; None where /proc is missing, "OOM" where the process was killed."""
    if device.type == "cuda":
        step = make_step(*args)
        step()
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if proc_status("VmHWM") is None:
        return None
    # read by glibc when the child starts: blocks over 128 KiB are mapped on their own and unmapped at free, and
    # nothing is kept on top of the heap, whatever the caller's environment asks for (see README: Speed)
    malloc_env = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072", "MALLOC_TOP_PAD_": "0"}
    exitcode, mb = in_fresh_process(_cpu_peak_mb, (make_step, args), malloc_env)
    if exitcode == 0:
        return mb
    return "OOM" if exitcode == -9 else "error"  # the kernel's OOM killer sends SIGKILL


def _cpu_peak_mb(make_step, args):
    step = make_step(*args)
    step()  # first-call costs (library buffers, thread pools) are not the step's
    gc.collect()
    base = proc_status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
    step()
    return (proc_status("VmHWM") - base) / 1024


def in_fresh_process(fn, args, env=None):
    """fn(*args) in a new Python process (spawned) with this one's thread count and the variables in env set for
    it alone, since glibc reads its MALLOC_ settings once, at start. Returns (exit code, fn's result or None)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_run_in_child, args=(fn, args, torch.get_num_threads(), queue))
    env = env or {}
    saved_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        child.start()
    finally:
        for k, v in saved_env.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v
    child.join()
    return child.exitcode, queue.get() if child.exitcode == 0 else None


def _run_in_child(fn, args, threads, queue):
    torch.set_num_threads(threads)
    queue.put(fn(*args))


MEMORY_METHOD = {"cuda": "CUDA max_memory_allocated above the inputs, second step",
                 "cpu": "growth of the peak resident set (Linux VmHWM) over the second step in a fresh process, "
                        "freed blocks returned to the system"}


def free_bytes():
    return (proc_meminfo("MemAvailable") or 8 * 2**20) * 1024
