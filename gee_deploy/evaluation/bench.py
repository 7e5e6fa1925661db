"""`gee-deploy bench` and `gee-deploy check`: a timm-style runner that returns numbers.

For every runtime: latency per batch size (warm-up, then timed calls until ``min_time`` seconds and
``min_iters`` calls; p50/p90/p99 and samples/s), accuracy on the test split, parity with the PyTorch
reference, spikes per sample and firing rate per layer read from the runtime's own ``spike_counts``, and
energy by eq. 17. Timing lives here, never in unit-test assertions.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import load_test_arrays
from ..energy import energy_per_layer, firing_rates, total_energy
from ..errors import ConfigError
from ..ort_session import PROVIDERS, create_session, precision_of, require_runtime
from ..parity import CHECK_GATES, Outputs, Parity, Thresholds, checks, compare
from ..serving.runtimes import OrtRuntime, Runtime
from ..spec import INPUT_NAME, OUTPUT_NAMES
from .neurobench import borrow_counts, neurobench_block, probe
from .provenance import provenance_warnings
from .runtimes import REFERENCES, RUNTIMES, NIRRuntime, default_runtimes, open_runtime

__all__ = [
    "evaluate",
    "profile_ops",
    "time_runtime",
    "runtime_stats",
    "open_runtimes",
    "run_bench",
    "run_check",
    "CheckResult",
    "BenchOptions",
    "CheckOptions",
    "bench_options",
    "check_options",
]


@dataclass(frozen=True, kw_only=True)
class BenchOptions:
    """What `gee-deploy bench` measures.

    Attributes:
        runtimes: runtime names (:data:`~gee_deploy.evaluation.runtimes.RUNTIMES`); None: every one that applies
            to each file on this machine.
        batch_sizes: the batch sizes to time (each >= 1).
        dataset: the dataset for accuracy and spikes; None: the one the model names.
        data_dir: where that dataset lives; None: its standard place.
        limit: the first N test samples; None: all.
        threads: intra-op threads for every runtime (the same for all, so the comparison is fair); None: each
            runtime's own.
        min_time: seconds of timed calls per runtime and batch size (>= 0).
        profile_ops: add each onnxruntime runtime's per-operator time split at the largest batch size.
    """

    runtimes: tuple[str, ...] | None = None
    batch_sizes: tuple[int, ...] = (1, 16, 64)
    dataset: str | None = None
    data_dir: Path | None = None
    limit: int | None = 1000
    threads: int | None = None
    min_time: float = 1.0
    profile_ops: bool = False


@dataclass(frozen=True, kw_only=True)
class CheckOptions:
    """What `gee-deploy check` gates on and how it measures.

    Attributes:
        thresholds: the parity limits and the lowest batch-1 speedup (:class:`gee_deploy.parity.Thresholds`).
        dataset, data_dir, limit: as for :class:`BenchOptions`.
        threads: intra-op threads for both runtimes (1 keeps the ratio stable on a shared machine).
        min_time: seconds of timed batch-1 calls per runtime.
        kind: the onnxruntime runtime that runs the ONNX file (:data:`gee_deploy.ort_session.PROVIDERS`).
    """

    thresholds: Thresholds = Thresholds()
    dataset: str | None = None
    data_dir: Path | None = None
    limit: int | None = 1000
    threads: int | None = 1
    min_time: float = 1.0
    kind: str = "ort-cpu"


def bench_options(
    *,
    runtimes: Sequence[str] | None = None,
    batch_sizes: Sequence[int] = (1, 16, 64),
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = 1000,
    threads: int | None = None,
    min_time: float = 1.0,
    profile_ops: bool = False,
) -> BenchOptions:
    """The checked :class:`BenchOptions` (``limit`` 0 or None: every sample; the numbers are checked where the
    CLI parses them, against their declared ranges).

    Raises:
        ConfigError: an unknown runtime name.
        RuntimeUnavailableError: a runtime whose package or plugin is not installed (one line naming the extra).
    """
    for name in runtimes or []:
        if name not in RUNTIMES:
            raise ConfigError(f"unknown runtime {name!r}; use one of {', '.join(RUNTIMES)}")
        if name in PROVIDERS:
            require_runtime(name)  # a missing plugin before any file is opened
    return BenchOptions(
        runtimes=None if runtimes is None else tuple(runtimes),
        batch_sizes=tuple(batch_sizes),
        dataset=dataset,
        data_dir=None if data_dir is None else Path(data_dir),
        limit=limit or None,
        threads=threads,
        min_time=min_time,
        profile_ops=profile_ops,
    )


def check_options(
    *,
    thresholds: Thresholds = Thresholds(),
    dataset: str | None = None,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = 1000,
    threads: int | None = 1,
    min_time: float = 1.0,
    kind: str = "ort-cpu",
) -> CheckOptions:
    """The :class:`CheckOptions` (``limit`` 0 or None: every sample); the numbers are checked where the CLI
    parses them (their declared ranges), ``thresholds`` by :class:`~gee_deploy.parity.Thresholds` itself."""
    return CheckOptions(
        thresholds=thresholds,
        dataset=dataset,
        data_dir=None if data_dir is None else Path(data_dir),
        limit=limit or None,
        threads=threads,
        min_time=min_time,
        kind=kind,
    )


def evaluate(runtime: Runtime, images: np.ndarray, labels: np.ndarray | None, batch_size: int = 64) -> Outputs:
    """Run ``runtime`` over ``images`` [N, C, H, W] in batches; keeps every logit and spike count."""
    logits, spikes = [], []
    for i in range(0, len(images), batch_size):
        out_logits, out_spikes = runtime(images[i : i + batch_size])
        logits.append(out_logits)
        spikes.append(out_spikes)
    return Outputs(np.concatenate(logits), np.concatenate(spikes), labels, tuple(runtime.spec.spiking_layers))


def time_runtime(
    runtime: Runtime, x: np.ndarray, warmup: int = 5, min_iters: int = 20, max_iters: int = 2000, min_time: float = 1.0
) -> dict:
    """Latency of ``runtime`` on batch ``x`` (the GPU runtimes synchronise inside ``run``).

    Returns a flat dict: batch, iters, p50/p90/p99/mean ms per call and samples/s.
    """
    for _ in range(warmup):
        runtime.run(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_iters and (len(times) < min_iters or time.perf_counter() - start < min_time):
        t0 = time.perf_counter()
        runtime.run(x)
        times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {
        "runtime": runtime.name,
        "batch": int(len(x)),
        "iters": len(times),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": float(ms.mean()),
        "samples_per_s": float(len(x) * len(times) / (ms.sum() / 1e3)),
    }


def runtime_stats(runtime: Runtime, ev: Outputs) -> dict:
    """Accuracy, spikes and eq. 17 energy of one runtime's evaluation."""
    spec = runtime.spec
    rates = firing_rates(ev.spikes, spec.neurons_per_layer, spec.timesteps)
    per_layer = energy_per_layer(spec.layers, dict(zip(spec.spiking_layers, rates.tolist())), spec.timesteps)
    genes = (spec.model_args["genes"] or 0) if "genes" in spec.model_args else None  # 0: dense twin; None: unknown
    return {
        "runtime": runtime.name,
        **runtime.describe(),
        "variant": spec.variant,
        "model_name": spec.model_name,
        "genes": genes,
        "accuracy": ev.accuracy,
        "spikes_per_sample": ev.spikes_per_sample,
        "spikes_per_layer": dict(zip(spec.spiking_layers, ev.spikes.astype(np.float64).mean(0).tolist())),
        "neurons_per_layer": dict(zip(spec.spiking_layers, spec.neurons_per_layer)),
        "firing_rates": dict(zip(spec.spiking_layers, rates.tolist())),
        "energy": {**total_energy(per_layer), "per_layer": [e.as_dict() for e in per_layer]},
    }


def open_runtimes(
    models: list[str | os.PathLike], runtimes: Sequence[str] | None, threads: int | None
) -> list[Runtime]:
    """One runtime per (file, applicable runtime name); the reference (PyTorch, or a NIR file's executor) first.
    ``runtimes``: names of :data:`~.runtimes.RUNTIMES` (checked by :func:`~.options.bench_options`); None: every
    one that applies to each file on this machine."""
    opened, used, nir_files = [], set(), []
    for path in models:
        if not Path(path).is_file():
            raise ConfigError(f"{path} not found")
        kinds = default_runtimes(path) if runtimes is None else [k for k in runtimes if k in _applicable(path)]
        for kind in kinds:
            if kind == "nir":  # opened last: its spec is the converted graph's
                nir_files.append(path)
            else:
                opened.append(open_runtime(path, kind, threads))
            used.add(kind)
    opened += [NIRRuntime(path, [r.spec for r in opened], threads) for path in nir_files]
    unused = [k for k in runtimes or [] if k not in used]
    if unused:
        raise ConfigError(f"runtime(s) {', '.join(unused)} apply to none of the given files")
    if not opened:
        raise ConfigError("no runtime to benchmark")
    return sorted(opened, key=lambda r: r.name not in REFERENCES)


def _applicable(path) -> tuple[str, ...]:
    suffix = Path(path).suffix.lower()
    if suffix in (".pt", ".pth"):
        return ("torch",)
    if suffix == ".nir":
        return ("nir",)
    if suffix == ".onnx":
        return tuple(PROVIDERS)
    return ("tensorrt",)


def _dataset(runtimes: list[Runtime], dataset: str | None) -> str:
    name = dataset or next((r.spec.dataset for r in runtimes if r.spec.dataset), "")
    if not name:
        raise ConfigError("the model does not name its dataset; pass --dataset")
    return name


def profile_ops(
    model: bytes | str | os.PathLike,
    x: np.ndarray,
    threads: int | None = None,
    kind: str = "ort-cpu",
    iters: int = 20,
    warmup: int = 2,
) -> list[dict]:
    """Where an onnxruntime graph's time goes: onnxruntime's own profiler over ``iters`` calls on batch ``x``.

    Args:
        model: the ONNX graph (bytes or path); x: its input batch [N, C, H, W]; threads, kind: as
            :func:`gee_deploy.ort_session.create_session`; warmup: calls before the counted ones (their
            allocations would otherwise be charged to the ops).

    Returns:
        One row per operator type, most expensive first: ``op``, ``ms_per_call`` (kernel time of its nodes per
        call), ``share`` of all kernel time, ``nodes`` (how many nodes of that type ran). Source: the ``Node``
        events (``*_kernel_time``) of ``SessionOptions.enable_profiling``'s trace.
    """
    with tempfile.TemporaryDirectory() as tmp:
        session = create_session(model, kind, threads, profile_prefix=str(Path(tmp) / "ort"))
        for _ in range(warmup + iters):
            session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = sorted(e["ts"] for e in events if e.get("name") == "model_run")
    since = runs[warmup] if len(runs) > warmup else 0
    total_us: dict[str, float] = {}
    nodes: dict[str, set] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e.get("ts", 0) >= since:
            op = e.get("args", {}).get("op_name", "?")
            total_us[op] = total_us.get(op, 0.0) + float(e.get("dur", 0))
            nodes.setdefault(op, set()).add(e["name"])
    grand = sum(total_us.values()) or 1.0
    rows = [
        {"op": op, "ms_per_call": us / 1e3 / iters, "share": us / grand, "nodes": len(nodes[op])}
        for op, us in total_us.items()
    ]
    return sorted(rows, key=lambda r: -r["ms_per_call"])


def run_bench(
    models: list[str | os.PathLike],
    options: BenchOptions = BenchOptions(),
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Benchmark every runtime of ``models`` as ``options`` ask and return the report (see
    ``report.write_report``).

    Args:
        models: checkpoints (.pt), ONNX files, TensorRT plans, NIR files (with the graph converted from them).
        options: the runtimes, batch sizes, data, threads and timing (:func:`~.options.bench_options`; with
            ``profile_ops``, each onnxruntime runtime's per-op time split at the largest batch size:
            :func:`profile_ops`).
        progress: callable(str) told what runs now.

    Raises:
        ConfigError: a file not found, runtimes that apply to none of the files, a model without a dataset
            and no ``options.dataset``, a model whose input is not the dataset's image shape.
    """
    say = progress or (lambda msg: None)
    threads, batch_sizes = options.threads, options.batch_sizes
    machine = _machine(threads)  # before the first runtime loads: the load of the other processes
    opened = open_runtimes(models, options.runtimes, threads)
    name = _dataset(opened, options.dataset)
    images, labels = load_test_arrays(name, options.data_dir, options.limit)
    warning = load_warning(machine["busy_cpus"], threads)
    if warning:
        say(warning)
    ref = next((r for r in opened if r.name in REFERENCES), None)
    evaluations = {}
    rows, latency = [], []
    for rt, label in zip(opened, _labels(opened)):
        if tuple(rt.spec.input_shape) != tuple(images.shape[1:]):
            raise ConfigError(
                f"{rt.path} takes [N, {', '.join(map(str, rt.spec.input_shape))}] but {name} images "
                f"are {list(images.shape[1:])}"
            )
        say(f"{rt.name}: evaluating {len(images)} samples of {name}")
        ev = evaluations[rt] = evaluate(rt, images, labels)
        row = {**runtime_stats(rt, ev), "runtime": label, "kind": rt.name}
        say(f"{rt.name}: counting NeuroBench's metrics")
        row["neurobench"] = neurobench_block(rt, ev.spikes, ev.accuracy, row["energy"]["sops"], probe(rt, images))
        if ref is not None:
            row["parity"] = compare(evaluations[ref], ev).as_dict()
        for b in batch_sizes:
            say(f"{rt.name}: timing batch {b}")
            x = np.ascontiguousarray(np.resize(images, (b, *images.shape[1:])))
            latency.append({**time_runtime(rt, x, min_time=options.min_time), "runtime": label})
        if options.profile_ops and isinstance(rt, OrtRuntime):
            say(f"{rt.name}: profiling ops at batch {len(x)}")
            row["op_profile"] = {"batch": int(len(x)), "ops": profile_ops(rt.path, x, rt.threads, rt.name)}
        rows.append(row)
    borrow_counts([r["neurobench"] for r in rows], [rt.spec for rt in opened])
    ref_label = rows[0]["runtime"] if ref is not None else None
    for lat in latency:
        base = next((r for r in latency if r["runtime"] == ref_label and r["batch"] == lat["batch"]), None)
        lat["speedup_vs_torch"] = base["p50_ms"] / lat["p50_ms"] if base else None
    return {
        "dataset": name,
        "samples": int(len(images)),
        "timesteps": opened[0].spec.timesteps,
        "batch_sizes": list(batch_sizes),
        "machine": machine,
        "runtimes": rows,
        "latency": latency,
        "warnings": provenance_warnings(opened, options.dataset),
    }


def _labels(runtimes: list[Runtime]) -> list[str]:
    """Runtime names, with the file's stem added where two files run on the same runtime."""
    names = [r.name for r in runtimes]
    labels = [f"{r.name}:{r.path.stem}" if names.count(r.name) > 1 else r.name for r in runtimes]
    return [f"{label}#{i}" if labels.count(label) > 1 else label for i, label in enumerate(labels)]


def load_warning(busy: float, threads: int | None) -> str | None:
    """The warning for a run that starts while other processes hold the CPUs, or None.

    Args:
        busy: CPUs other processes kept busy just before the run (:func:`busy_cpus`).
        threads: the intra-op threads every runtime gets (None: each runtime's own, usually all cores).
    """
    cpus = os.cpu_count() or 1
    if busy < 0.5 or (threads == 1 and busy <= cpus - 1):  # a single thread still finds a free core
        return None
    advice = "consider --threads 1" if threads != 1 else "a single thread still shares its core"
    return (
        f"warning: other processes kept {busy:.1f} of {cpus} CPUs busy just before the run: latencies and the "
        f"ratios between runtimes may mislead ({advice}); report.md records the load"
    )


def busy_cpus(seconds: float = 0.5) -> float:
    """How many CPUs other processes keep busy now: the non-idle share of all CPUs' time over ``seconds``
    while this process sleeps, times the CPU count (Linux /proc/stat, proc(5)); elsewhere the 1-minute load
    average. Not the load average itself on Linux: that decays over a minute, so right after a training run
    (``make demo``) it reports the load the run itself caused."""

    def idle_and_total() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        return values[3] + (values[4] if len(values) > 4 else 0), sum(values[:8])  # idle + iowait; no guest

    try:
        idle0, total0 = idle_and_total()
        time.sleep(seconds)
        idle1, total1 = idle_and_total()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    total = total1 - total0
    return (os.cpu_count() or 1) * (1 - (idle1 - idle0) / total) if total > 0 else 0.0


def _machine(threads: int | None) -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "load_average": os.getloadavg()[0],
        "busy_cpus": busy_cpus(),
    }


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    """What ``check`` measured: parity on ``dataset``, batch-1 p50 latencies (ms), the provenance warnings (an
    ONNX file exported from another checkpoint, a --dataset the model was not trained on), and the runtime that
    ran the file with the precision of its float ops and the file's count of int8 layers."""

    parity: Parity
    dataset: str
    torch_p50_ms: float
    ort_p50_ms: float
    warnings: tuple[str, ...] = ()  # :func:`~.provenance.provenance_warnings`
    runtime: str = "ort-cpu"
    precision: str = "f32"
    int8_layers: int = 0

    @property
    def speedup(self) -> float:
        """PyTorch eager p50 / onnxruntime p50 at batch 1."""
        return self.torch_p50_ms / self.ort_p50_ms


def run_check(
    checkpoint: str | os.PathLike, onnx_path: str | os.PathLike, options: CheckOptions = CheckOptions()
) -> tuple[CheckResult, list[str]]:
    """Parity and the batch-1 latency ratio of ``onnx_path`` (on the onnxruntime runtime ``options.kind``:
    :data:`gee_deploy.ort_session.PROVIDERS`) against ``checkpoint`` (or the NIR
    file it was converted from, run by the NIR executor); the gates are :data:`gee_deploy.parity.CHECK_GATES`,
    at ``options.thresholds`` (:func:`~.options.check_options`).

    Returns:
        (what was measured, one line per failed gate)
    """
    threads, thresholds, min_time = options.threads, options.thresholds, options.min_time
    ort = open_runtime(onnx_path, options.kind, threads)
    ref = (
        NIRRuntime(checkpoint, [ort.spec], threads)
        if Path(checkpoint).suffix.lower() == ".nir"
        else open_runtime(checkpoint, "torch", threads)
    )
    name = _dataset([ref, ort], options.dataset)
    images, labels = load_test_arrays(name, options.data_dir, options.limit)
    parity = compare(evaluate(ref, images, labels), evaluate(ort, images, labels), thresholds.atol)
    x = np.ascontiguousarray(images[:1])
    t_ref, t_ort = time_runtime(ref, x, min_time=min_time), time_runtime(ort, x, min_time=min_time)
    result = CheckResult(
        parity=parity,
        dataset=name,
        torch_p50_ms=t_ref["p50_ms"],
        ort_p50_ms=t_ort["p50_ms"],
        warnings=tuple(provenance_warnings([ref, ort], options.dataset)),
        runtime=options.kind,
        precision=precision_of(options.kind),
        int8_layers=sum(layer.precision == "int8" for layer in ort.spec.layers),
    )
    return result, [c.message for c in checks(parity, thresholds, CHECK_GATES, result.speedup) if not c.ok]
