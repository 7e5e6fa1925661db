"""The two int8 forms (``--int8-form integer | qdq``) on onnxruntime's CPU provider and on OpenVINO (through
onnxruntime's OpenVINO execution provider plugin, f32 inference precision): speed and exactness.

    python benchmarks/int8_forms.py                           # one spiking conv and runs/demo/q.pt, 1 thread
    python benchmarks/int8_forms.py --checkpoint Q.pt --threads 1 2 --batches 1 64

Part 1, one spiking conv (256 -> 256 channels, 16 x 16, 3 x 3, stride 1, batch 4; docs/export.md, "Int8"),
written by the exporter's own emitters (:func:`gee_deploy.export.int8.emit_int8` / ``emit_qdq``) from float 0/1
spikes, plus ``qdq-axis``: the other common QDQ spelling (the per-channel scale inside the weight's
DequantizeLinear, ``axis`` 0, the bias in the Conv), and ``fp32``: the float conv of the same float weights.
Each is checked against the exact result float32(float32(integer sum) * scale) + bias (0 = bit-identical).

Part 2, a whole quantised checkpoint (``gee-deploy quantize``'s output; default runs/demo/q.pt) exported dense
(fp32), int8 integer and int8 QDQ, each on both runtimes, interleaved in one process, on its dataset's test
images: median ms per batch, effective dense GOP/s (2 x dense MACs per sample x batch / time), and parity against
the PyTorch model (top-1 agreement, total spikes) and between the two forms (bit-identical outputs or not).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from onnx import TensorProto
from torch import nn

from gee_deploy.checkpoint import load_model
from gee_deploy.data import load_test_arrays
from gee_deploy.export import build_onnx
from gee_deploy.export.graph import GraphBuilder, tensor_info
from gee_deploy.export.int8 import emit_int8, emit_qdq, int8_layer, quantise_spikes
from gee_deploy.neurons import SpikeRecorder
from gee_deploy.ort_session import create_session, import_onnxruntime, openvino_session_options

RUNTIMES = ("ort-cpu", "openvino-f32")


def session(model: bytes, runtime: str, threads: int):
    if runtime == "ort-cpu":
        return create_session(model, threads=threads)
    ort = import_onnxruntime()
    return ort.InferenceSession(model, openvino_session_options(threads=threads))


def timed(sessions: dict, feeds: dict, rounds: int) -> dict:
    """Median seconds per run of each session, interleaved round by round."""
    for s in sessions.values():
        s.run(None, feeds)
    times = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feeds)
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def conv_graphs(c: int = 256, size: int = 16, k: int = 3) -> tuple[dict[str, bytes], np.ndarray, np.ndarray, int]:
    """The one-conv graphs (float spikes in, float32 membrane input out), the input, the exact output, MACs."""
    torch.manual_seed(0)
    conv = nn.Conv2d(c, c, k, 1, k // 2, bias=False)
    bn = nn.BatchNorm2d(c)
    bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.2, 3)
    bn.weight.data.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
    layer = int8_layer(conv, bn.eval())
    x = (torch.rand(4, c, size, size) < 0.2).float().numpy()
    codes = layer.q.value.transpose(3, 2, 0, 1)  # [Cout, Cin, k, k]
    acc = torch.nn.functional.conv2d(torch.from_numpy(x).double(), torch.from_numpy(codes.astype(np.float64)),
                                     padding=k // 2).numpy()
    scale, bias = layer.scale.value, layer.bias.value
    exact = acc.astype(np.float32) * scale.reshape(-1, 1, 1) + bias.reshape(-1, 1, 1)

    def model(write) -> bytes:
        g = GraphBuilder()
        g.op("Identity", [write(g)], out_names=["y"])
        return g.model([tensor_info("x", ["n", c, size, size])], [tensor_info("y", ["n", c, size, size])], 18,
                       {}).SerializeToString()

    def integer(g):
        return emit_int8(g, g.op("Cast", ["x"], "x_u8", to=TensorProto.UINT8), layer, (c, size, size), "conv")

    def qdq_axis(g):
        unit, zero = g.const(1.0, "one", scalar=True), g.const(0, "zero", np.int8, scalar=True)
        x_dq = g.op("DequantizeLinear", [g.op("QuantizeLinear", ["x", unit, zero], "xq"), unit, zero], "xdq")
        w = g.op("DequantizeLinear", [g.const(codes, "q", np.int8), g.const(scale, "s"),
                                      g.const(np.zeros(c), "zp", np.int8)], "w", axis=0)
        return g.op("Conv", [x_dq, w, g.const(bias, "b")], "y0", pads=[k // 2] * 4)

    def fp32(g):
        w = g.const(codes.astype(np.float32) * scale.reshape(-1, 1, 1, 1), "w")
        return g.op("Conv", ["x", w, g.const(bias, "b")], "y0", pads=[k // 2] * 4)

    graphs = {"integer": model(integer), "qdq": model(lambda g: emit_qdq(g, quantise_spikes(g, "x", "x"), layer, "conv")),
              "qdq-axis": model(qdq_axis), "fp32": model(fp32)}
    return graphs, x, exact, 4 * c * c * k * k * size * size


def part_conv(threads: int, rounds: int) -> None:
    graphs, x, exact, macs = conv_graphs()
    sessions = {(f, r): session(g, r, threads) for f, g in graphs.items() for r in RUNTIMES}
    seconds = timed(sessions, {"x": x}, rounds)
    print(f"\n## one spiking conv 256 -> 256, 16 x 16, 3 x 3, batch 4, {threads} thread(s)\n")
    print("| form | runtime | ms | GOP/s | max abs diff to exact | outputs differing |")
    print("|---|---|---:|---:|---:|---:|")
    for (form, runtime), s in sessions.items():
        y = s.run(None, {"x": x})[0]
        print(f"| {form} | {runtime} | {seconds[form, runtime] * 1e3:.2f} | {2 * macs / seconds[form, runtime] / 1e9:.0f} "
              f"| {np.abs(y - exact).max():.3g} | {(y != exact).sum():,} of {y.size:,} |")


def part_model(checkpoint: Path, threads: int, batches: list[int], rounds: int, images: int) -> None:
    model = load_model(checkpoint).eval()
    x_all, _ = load_test_arrays(model.checkpoint.dataset_name, None, images)
    built = {}
    for name, variant, form in (("fp32", "dense", None), ("int8 integer", "int8", "integer"),
                                ("int8 qdq", "int8", "qdq")):
        proto, spec = build_onnx(model, variant, storage="folded", int8_form=form)
        built[name] = proto.SerializeToString()
    macs = spec.dense_macs_per_sample
    sessions = {(n, r): session(g, r, threads) for n, g in built.items() for r in RUNTIMES}
    with torch.no_grad(), SpikeRecorder(model) as rec:
        ref = model(torch.from_numpy(x_all)).numpy()
    ref_counts = rec.stacked().numpy()
    outs = {k: s.run(None, {"input": x_all}) for k, s in sessions.items()}
    print(f"\n## {checkpoint} ({model.checkpoint.model_name}, T = {model.timesteps}), {threads} thread(s); "
          f"parity on {len(x_all)} test images\n")
    header = " | ".join(f"b{b} ms | b{b} GOP/s" for b in batches)
    print(f"| graph | runtime | {header} | top-1 vs PyTorch | spikes graph / PyTorch | = integer form |")
    print("|---|---|" + "---:|---:|" * len(batches) + "---:|---:|---|")
    rows = {k: [] for k in sessions}
    for b in batches:
        seconds = timed(sessions, {"input": x_all[:b]}, rounds)
        for k in sessions:
            rows[k].append(f"{seconds[k] * 1e3:.2f} | {2 * macs * b / seconds[k] / 1e9:.1f}")
    for (name, runtime), cells in rows.items():
        logits, counts = outs[name, runtime]
        same = "-" if name == "fp32" else str(all(np.array_equal(a, c) for a, c in
                                                 zip(outs[name, runtime], outs["int8 integer", "ort-cpu"])))
        print(f"| {name} | {runtime} | {' | '.join(cells)} | {(logits.argmax(1) == ref.argmax(1)).mean():.4f} "
              f"| {counts.sum():.0f} / {ref_counts.sum():.0f} | {same} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, default=Path("runs/demo/q.pt"))
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--images", type=int, default=512, help="test images for part 2's parity")
    args = p.parse_args()
    if not args.checkpoint.is_file():
        raise SystemExit(f"error: {args.checkpoint} not found: `gee-deploy quantize RUN/best.pt --out "
                         f"{args.checkpoint}` first")
    for threads in args.threads:
        torch.set_num_threads(threads)
        part_conv(threads, args.rounds)
        part_model(args.checkpoint, threads, args.batches, args.rounds, args.images)


if __name__ == "__main__":
    main()
