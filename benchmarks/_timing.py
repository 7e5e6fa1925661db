"""What the benchmark scripts share: the CPU a number was measured on, interleaved timing, CPU seconds, JSON.

Scripts run as ``python benchmarks/NAME.py``, so this directory is on sys.path and they ``from _timing import``.

Timing on a shared machine: time every candidate block by block in turn (:func:`interleaved`), so load from
other processes hits them alike, and with one intra-op thread time the calling thread's CPU time
(:func:`clock`), which ignores what the scheduler gave to other processes.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np


def cpu_name() -> str:
    """The CPU's model name and the SIMD flags that matter for these kernels (AVX2, AVX-512, VNNI, BF16, AMX)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        model = next(l.split(":", 1)[1].strip() for l in lines if l.startswith("model name"))
        flags = next(l.split(":", 1)[1].split() for l in lines if l.startswith("flags"))
        simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
        return f"{model} ({', '.join(simd)})"
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def clock(threads: int) -> Callable[[], float]:
    """The calling thread's CPU time with one thread (onnxruntime and torch then run in the caller's thread),
    else the wall clock."""
    return time.thread_time if threads == 1 else time.perf_counter


def call_seconds(fn: Callable[[], object], timer: Callable[[], float] = time.thread_time) -> float:
    """Seconds of one call of ``fn`` on ``timer``."""
    t0 = timer()
    fn()
    return timer() - t0


def median_seconds(fn: Callable[[], object], repeats: int, timer: Callable[[], float] = time.thread_time) -> float:
    """Median seconds of ``repeats`` calls of ``fn``."""
    return float(np.median([call_seconds(fn, timer) for _ in range(repeats)]))


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, iters: int,
                timer: Callable[[], float] = time.perf_counter, warmup: int = 3) -> dict[str, np.ndarray]:
    """Seconds of every timed call of each of ``fns``, as [rounds, iters]: after ``warmup`` untimed calls each,
    ``rounds`` rounds in which every fn in turn runs a block of ``iters`` timed calls."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            times[k] += [call_seconds(fn, timer) for _ in range(iters)]
    return {k: np.reshape(v, (rounds, iters)) for k, v in times.items()}


def best_block(seconds: np.ndarray) -> float:
    """The median of the least disturbed block of an :func:`interleaved` [rounds, iters] array."""
    return float(np.min(np.median(seconds, axis=1)))


def process_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds so far: of process ``pid`` (Linux /proc), or of this process and its reaped
    children (spawned workers) when None."""
    if pid is not None:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def write_json(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented JSON in ``path`` (a script's ``--json`` output)."""
    Path(path).write_text(json.dumps(obj, indent=1) + "\n")


def kernel_ms(profiled_session: Callable[[str], object], feed: dict, runs: int, warmup: int = 3) -> dict[str, float]:
    """Mean ms per run of each onnxruntime kernel type, most expensive first, over ``runs`` runs after ``warmup``.

    ``profiled_session(prefix)`` creates the session with profiling to ``prefix``; the times are the ``Node``
    events (``*_kernel_time``, by ``op_name``) of its trace. For graphs with gee-deploy's own input and outputs,
    :func:`gee_deploy.evaluation.bench.profile_ops` gives the same split with shares.
    """
    with tempfile.TemporaryDirectory() as d:
        session = profiled_session(os.path.join(d, "p"))
        for _ in range(warmup + runs):
            session.run(None, feed)
        events = json.loads(Path(session.end_profiling()).read_text())
    since = sorted(e["ts"] for e in events if e.get("name") == "model_run")[warmup]
    ms: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= since:
            ms[e["args"]["op_name"]] = ms.get(e["args"]["op_name"], 0.0) + e["dur"] / 1e3 / runs
    return dict(sorted(ms.items(), key=lambda kv: -kv[1]))
