"""Every engine that can run our graphs on a CPU, interleaved in one process: speed against this CPU's own GEMM
rates, where the time goes, and parity with PyTorch (docs/results.md, "Int8 engines").

    python benchmarks/int8_engines.py                                   # ResNet-19, VGG-16 (g = 150), SmallNet
    python benchmarks/int8_engines.py --models resnet19 --threads 1 --rounds 3 --samples 16

Engines (one graph file each, run through :func:`gee_deploy.ort_session.create_session`):

* ``ort-fp32``: our fp32 (dense) graph on onnxruntime's CPU provider;
* ``ort-int8``: our int8 graph, integer form (MatMulInteger on uint8 spikes x int8 codes), CPU provider;
* ``qdq-ort`` / ``qdq-ov``: the QDQ int8 form (``--int8-form qdq``: QuantizeLinear/DequantizeLinear around Conv
  and Gemm) on the CPU provider / on the OpenVINO execution provider plugin with f32 inference precision
  (``--runtime openvino``);
* ``ov-default``: our fp32 graph on the OpenVINO plugin at OpenVINO's default precision for this CPU: bf16 on a
  CPU with AMX or AVX-512-BF16 (``--runtime openvino-bf16`` requests it; the plugin with no precision hint gives
  the same outputs here), the peer a user would pick.

Where the plugin offers no CPU device (onnxruntime-ep-openvino 1.8 lists Intel CPUs only: docs/serving.md), the
two OpenVINO engines run on OpenVINO's own runtime instead (``pip install openvino``, the version the plugin
bundles; :class:`OpenVINOSession`: the same CPU properties the plugin is given), marked ``(openvino)`` in the
table, with OpenVINO's per-layer performance counters as their op split.

Models are untrained zoo nets with BatchNorm calibrated so every layer fires (``tests/test_export.py``'s
``lively``): CIFAR shapes (3 x 32 x 32, T = 4) for ResNet-19 and VGG-16 at g = 150, SmallNet's own 1 x 28 x 28.
Latency does not depend on the weight values. Parity: each engine against its PyTorch model on ``--samples``
random images: the fp32 engines and ``ov-default`` against the fp32 model, the int8 engines against the same
model with int8 weights attached (``gee_deploy.quantisation.attach_quantisers`` on the stem and every
spike-reading layer, what ``gee-deploy quantize`` fine-tunes; its eval forward computes what its int8 export
computes, bit for bit), whose int8 export must meet the fp32 limits (:class:`gee_deploy.parity.Thresholds`): top-1
agreement >= 99.9% and total spikes within 0.1%.

Printed per model, thread count and batch: p50 latency (interleaved blocks; one thread: the calling thread's CPU
time, which ignores other processes on a shared machine; all cores: the wall clock), effective GOP/s (2 x dense
MACs per sample x batch / time), its fraction of the raw GEMM rate measured in the same run (fp32 MatMul for
fp32 engines and ov-default, uint8 x int8 MatMulInteger for int8 engines), the speed-ups over ``ort-fp32`` and
``ov-default``, parity, and onnxruntime's per-op split (profiler; an OpenVINO partition shows as one op).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto, helper, numpy_helper

from _timing import cpu_name
from deploy_speed import timed  # interleaved blocks, p50 (this directory is on sys.path when run as a script)

from gee_deploy.testing import lively  # random BatchNorm affines, statistics calibrated: every layer fires

from gee_deploy.evaluation.bench import profile_ops
from gee_deploy.export import build_onnx
from gee_deploy.neurons import SpikeRecorder
from gee_deploy.ort_session import create_session, import_onnxruntime, openvino_unavailable
from gee_deploy.parity import Outputs, Thresholds, checks, compare
from gee_deploy.quantisation import attach_quantisers, spike_reading_layers, stem_layer
from gee_deploy.spec import INPUT_NAME
from gee_deploy.walk import describe
from gee_deploy.zoo import create_model

# engine -> (graph, session kind, reference model, GEMM rate it is measured against)
ENGINES = {"ort-fp32": ("fp32", "ort-cpu", "fp32", "fp32"), "ort-int8": ("int8", "ort-cpu", "int8", "int8"),
           "qdq-ort": ("qdq", "ort-cpu", "int8", "int8"), "qdq-ov": ("qdq", "openvino", "int8", "int8"),
           "ov-default": ("fp32", "openvino-bf16", "fp32", "fp32")}
BATCHES = {"smallnet": (1, 64)}


class OpenVINOSession:
    """A graph compiled by OpenVINO's own runtime for its CPU device with the properties
    :func:`gee_deploy.ort_session.create_session` gives the plugin (``INFERENCE_PRECISION_HINT`` ``precision``,
    the LATENCY hint, one stream, ``threads`` inference threads), run like an ``InferenceSession``."""

    def __init__(self, model: bytes, precision: str, threads: int, perf_counters: bool = False):
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": "1",
                  "INFERENCE_NUM_THREADS": str(threads), "PERF_COUNT": "YES" if perf_counters else "NO"}
        self.compiled = core.compile_model(core.read_model(model, b""), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.outputs = [o.get_any_name() for o in self.compiled.outputs]

    def run(self, _names, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        result = self.request.infer(feeds)
        return [result[name] for name in self.outputs]

    def op_split(self, x: np.ndarray, iters: int) -> dict[str, float]:
        """Share of OpenVINO's per-layer time (performance counters, summed over ``iters`` runs) per layer type."""
        totals: dict[str, float] = {}
        for _ in range(iters):
            self.run(None, {INPUT_NAME: x})
            for info in self.request.profiling_info:
                totals[info.node_type] = totals.get(info.node_type, 0.0) + info.real_time.total_seconds()
        whole = sum(totals.values()) or 1.0
        return dict(sorted(((k, v / whole) for k, v in totals.items()), key=lambda kv: -kv[1]))


OV_PRECISION = {"openvino": "f32", "openvino-bf16": "bf16"}


def session(model: bytes, kind: str, threads: int, native_openvino: bool):
    """``kind``'s session: onnxruntime's (:func:`create_session`), or an :class:`OpenVINOSession` for an OpenVINO
    kind where the plugin cannot run here."""
    if native_openvino and kind in OV_PRECISION:
        return OpenVINOSession(model, OV_PRECISION[kind], threads)
    return create_session(model, kind, threads=threads)


def zoo(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "smallnet":
        model = create_model("smallnet")
    else:
        model = create_model(name, genes=150, timesteps=4, num_classes=10, in_channels=3, image_size=32)
    images = torch.rand(64, model.in_channels, model.image_size, model.image_size, generator=torch.Generator()
                        .manual_seed(1))
    return lively(model, images[:16]), images


def graphs(model: torch.nn.Module, quantised: torch.nn.Module) -> dict[str, bytes]:
    """fp32 (of ``model``), int8 in the integer form and int8 in the QDQ form (of ``quantised``, its int8 twin:
    the graphs compute what its eval forward computes), serialised."""
    return {"fp32": build_onnx(model, "dense")[0].SerializeToString(),
            "int8": build_onnx(quantised, "int8", int8_form="integer")[0].SerializeToString(),
            "qdq": build_onnx(quantised, "int8", int8_form="qdq")[0].SerializeToString()}


def gemm_rates(threads: int, clock) -> dict[str, float]:
    """GOP/s of onnxruntime's fp32 MatMul and uint8 x int8 MatMulInteger, [512, 1024] x [1024, 1024] (constant
    right side, prepacked), ``threads`` intra-op threads, best of 7 blocks."""
    m, k, n = 512, 1024, 1024
    rng = np.random.default_rng(0)
    rates = {}
    for label, a_type, b in (("fp32", TensorProto.FLOAT, rng.standard_normal((k, n)).astype(np.float32)),
                             ("int8", TensorProto.UINT8, rng.integers(-127, 128, (k, n)).astype(np.int8))):
        op = "MatMul" if label == "fp32" else "MatMulInteger"
        out_type = TensorProto.FLOAT if label == "fp32" else TensorProto.INT32
        g = helper.make_graph([helper.make_node(op, ["a", "b"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("a", a_type, [m, k])],
                              [helper.make_tensor_value_info("y", out_type, [m, n])], [numpy_helper.from_array(b, "b")])
        s = create_session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString(),
                           threads=threads)
        a = rng.random((m, k), dtype=np.float32) if label == "fp32" else rng.integers(0, 2, (m, k)).astype(np.uint8)
        for _ in range(3):
            s.run(None, {"a": a})
        best = float("inf")
        for _ in range(7):
            t0 = clock()
            for _ in range(5):
                s.run(None, {"a": a})
            best = min(best, (clock() - t0) / 5)
        rates[label] = 2 * m * k * n / best / 1e9
    return rates


def torch_outputs(model: torch.nn.Module, images: torch.Tensor, batch: int = 8) -> Outputs:
    logits, spikes = [], []
    for i in range(0, len(images), batch):
        with torch.inference_mode(), SpikeRecorder(model) as rec:
            logits.append(model(images[i:i + batch]).numpy())
            spikes.append(rec.stacked().float().numpy())
    return Outputs(np.concatenate(logits), np.concatenate(spikes), None)


def session_outputs(session, images: np.ndarray, batch: int = 8) -> Outputs:
    logits, spikes = [], []
    for i in range(0, len(images), batch):
        out = session.run(None, {INPUT_NAME: images[i:i + batch]})
        logits.append(out[0])
        spikes.append(out[1])
    return Outputs(np.concatenate(logits), np.concatenate(spikes), None)


def run(names, engines, threads, rounds: int, samples: int, profile: bool) -> list[dict]:
    rows = []
    cpus = os.cpu_count() or 1
    native = openvino_unavailable() is not None  # the plugin offers no CPU device: OpenVINO's own runtime
    for name in names:
        model, images = zoo(name)
        quantised = copy.deepcopy(model)
        attach_quantisers(quantised, [stem_layer(quantised), *spike_reading_layers(quantised)])
        refs = {"fp32": torch_outputs(model, images[:samples]), "int8": torch_outputs(quantised, images[:samples])}
        dense_macs = describe(model).dense_macs_per_sample
        t0 = time.perf_counter()
        files = graphs(model, quantised)
        print(f"{name}: graphs written in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        todo = list(engines)
        for th in threads:
            n_threads = th or cpus
            clock = time.thread_time if n_threads == 1 else time.perf_counter
            sessions = {e: session(files[ENGINES[e][0]], ENGINES[e][1], n_threads, native) for e in todo}
            parity = {}
            for e, s in sessions.items():
                p = compare(refs[ENGINES[e][2]], session_outputs(s, images[:samples].numpy()))
                ok = all(c.ok for c in checks(p, Thresholds(), ("top1", "spikes")))
                parity[e] = {"top1_agreement": p.top1_agreement, "spike_count_delta": p.spike_count_delta,
                             "max_logit_diff": p.max_logit_diff, "meets_parity": ok}
            for batch in BATCHES.get(name, (1, 8)):
                x = np.ascontiguousarray(np.resize(images.numpy(), (batch, *images.shape[1:])))
                load = os.getloadavg()[0]
                rates = gemm_rates(n_threads, clock)
                t = timed({e: (lambda s=s: s.run(None, {INPUT_NAME: x})) for e, s in sessions.items()}, n_threads,
                          rounds)
                rates_after = gemm_rates(n_threads, clock)
                rates = {k: max(v, rates_after[k]) for k, v in rates.items()}
                for e in todo:
                    gops = 2 * dense_macs * batch / t[e] / 1e9
                    row = {"model": name, "engine": e, "threads": n_threads, "batch": batch, "p50_ms": t[e] * 1e3,
                           "eff_gops": gops, "of_gemm": gops / rates[ENGINES[e][3]], "gemm_rate": ENGINES[e][3],
                           "gemm_gops": rates, "load_average": load, **parity[e],
                           "vs_ort_fp32": t["ort-fp32"] / t[e] if "ort-fp32" in t else None,
                           "vs_ov_default": t["ov-default"] / t[e] if "ov-default" in t else None}
                    if native and ENGINES[e][1] in OV_PRECISION:
                        row["engine"] = f"{e} (openvino)"
                    if profile and isinstance(sessions[e], OpenVINOSession):
                        counted = OpenVINOSession(files[ENGINES[e][0]], OV_PRECISION[ENGINES[e][1]], n_threads, True)
                        row["ops"] = counted.op_split(x, iters=5 if batch >= 8 else 20)
                    elif profile:
                        ops = profile_ops(files[ENGINES[e][0]], x, n_threads, ENGINES[e][1],
                                          iters=5 if batch >= 8 else 20)
                        row["ops"] = {o["op"].split("ExecutionProvider_")[0]: o["share"] for o in ops}
                    rows.append(row)
                    print(line(row), file=sys.stderr)
    return rows


def line(r: dict) -> str:
    ops = ", ".join(f"{k} {v:.0%}" for k, v in list(r.get("ops", {}).items())[:8])
    fast = lambda v: "-" if v is None else f"{v:.2f}x"  # noqa: E731
    return (f"| {r['model']} | {r['engine']} | {r['threads']} | {r['batch']} | {r['p50_ms']:.2f} | "
            f"{r['eff_gops']:.0f} | {r['of_gemm']:.0%} of {r['gemm_gops'][r['gemm_rate']]:.0f} ({r['gemm_rate']}) | "
            f"{fast(r['vs_ort_fp32'])} | {fast(r['vs_ov_default'])} | {r['top1_agreement']:.3f} | "
            f"{r['spike_count_delta']:.2e} | {'yes' if r['meets_parity'] else 'no'} | {r['load_average']:.1f} | "
            f"{ops} |")


HEADER = ("| model | engine | threads | batch | p50 ms | eff. GOP/s | of GEMM rate | x ort-fp32 | x ov-default | "
          "top-1 agr. | spike delta | meets parity | load | profiler: op time split |\n"
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---|")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet19", "vgg16", "smallnet"])
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    p.add_argument("--threads", type=int, nargs="+", default=[1, 0], help="0 = all cores")
    p.add_argument("--rounds", type=int, default=5, help="interleaved blocks per engine")
    p.add_argument("--samples", type=int, default=32, help="random images for parity with PyTorch (<= 64)")
    p.add_argument("--no-profile", action="store_true", help="skip onnxruntime's per-op split")
    p.add_argument("--json", help="also write the rows here")
    a = p.parse_args()
    torch.set_num_threads(1)
    machine = f"CPU: {cpu_name()}; onnxruntime {import_onnxruntime().__version__}"
    print(machine, file=sys.stderr)
    print(HEADER, file=sys.stderr)
    rows = run(a.models, a.engines, a.threads, a.rounds, min(a.samples, 64), not a.no_profile)
    print(machine)
    print(HEADER)
    print("\n".join(line(r) for r in rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
