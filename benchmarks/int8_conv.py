"""Which standard-ONNX int8 form runs a spike-reading conv fastest in onnxruntime, and which is exact.

    python benchmarks/int8_conv.py                  # SmallNet (untrained, g=40, T=4) body layers, batch T*64
    python benchmarks/int8_conv.py --batch 1 --threads 1 2

Every conv after the stem reads spikes, exactly 0 or 1 (docs/design.md, "Int8 layers"). Weights are quantised
symmetrically per output channel, W ~= q * s (q int8, s float [Cout]); a uint8 0/1 input is exact and the
int32 sum of q over the active inputs is exact, so an exact int8 layer is y = float(acc) * s + b.

Forms, per layer (the dense export's own weights and shapes):

* ``fp32``: Conv with the float32 weights (the baseline, not quantised).
* ``fp32-deq``: Conv with the dequantised weights q * s in float32, on float 0/1 input (what a fake-quantised
  PyTorch model computes; rounds in its float sums).
* ``convint-u8``: ConvInteger(uint8 x, uint8 q + 128, w_zero_point 128) -> Cast -> Mul(s) -> Add(b).
* ``convint-s8``: ConvInteger with int8 weights directly (if this onnxruntime registers it).
* ``qdq``: DequantizeLinear(x u8, 1, 0) and DequantizeLinear(q, s, axis 0) -> Conv -> float output (no
  QuantizeLinear after the conv: the membrane input stays float).
* ``qdq-out``: as qdq plus QuantizeLinear/DequantizeLinear of the conv output, the pattern onnxruntime fuses
  into QLinearConv; quantising the membrane input is lossy (output scale from the layer's output range).
* ``qlinearconv``: QLinearConv written directly (uint8 output), then DequantizeLinear; lossy likewise.
* ``fp32-gemm``: a conv whose kernel covers its whole (unpadded) input written as Flatten + Gemm, float32.
* ``im2col-nhwc``: spikes kept NHWC as uint8; the k x k patches gathered by k^2 strided Slices of the padded
  uint8 map and one Concat (1 byte per value), then MatMulInteger(u8, s8) -> Cast -> Mul -> Add, output NHWC
  float (the LIF is elementwise and does not care about the layout).
* ``im2col-s2d``: as im2col-nhwc for a stride-s conv with s | k, but first a space-to-depth in NHWC
  (Pad, Reshape, Transpose, Reshape: one uint8 pass), so the patches are (k/s)^2 unstrided Slices of
  s^2 C channels each instead of k^2 strided ones of C.
* ``im2col-bmm``: spikes NCHW uint8; the k^2 strided Slices concatenated on the channel axis (large
  contiguous chunks), reshaped to [N, k^2 C, Ho Wo], then MatMulInteger(q [Cout, k^2 C] int8, col) batched
  over N -> [N, Cout, Ho Wo] int32: NCHW out, no transpose.
* ``im2col-t``: as im2col-bmm, then one uint8 Transpose to [N, Ho, Wo, k^2 C] and MatMulInteger(col, q^T):
  one big GEMM, NHWC float out.
* ``matmulint`` (linear layers, and convs whose kernel covers the whole input): MatMulInteger(u8, s8) ->
  Cast -> Mul -> Add, which onnxruntime fuses into MatMulIntegerToFloat.

For each: p50 ms (1 thread by default), the kernels onnxruntime's profiler says ran (op names), and the max
|difference| to the exact result float32(float32(acc) * s) + b computed in numpy (0 = bit-identical).
"""
from __future__ import annotations

import argparse

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from gee_deploy.export import build_onnx
from gee_deploy.ort_session import create_session
from gee_deploy.quantisation import quantise_weight
from gee_deploy.zoo import create_model

from _timing import best_block, call_seconds, clock, interleaved, kernel_ms

FORMS = ("fp32", "fp32-deq", "fp32-gemm", "convint-u8", "convint-s8", "qdq", "qdq-out", "qlinearconv", "matmulint",
         "im2col-nhwc", "im2col-s2d", "im2col-bmm", "im2col-t")


def quantise(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The product's symmetric per-output-channel int8 (:func:`gee_deploy.quantisation.quantise_weight`) of a
    float32 array: (q int8 [Cout, ...], s float32 [Cout]) with q * s ~= w."""
    q, s = quantise_weight(torch.tensor(w))
    return q.numpy(), s.numpy()


def body_layers(model: torch.nn.Module, batch: int) -> list[dict]:
    """The spike-reading Conv/Gemm layers of the dense export with their input shapes at ``batch`` samples."""
    proto, _ = build_onnx(model.eval(), "dense")
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    shapes = onnx.shape_inference.infer_shapes(proto)
    dims = {v.name: [d.dim_value or batch * model.timesteps for d in v.type.tensor_type.shape.dim]
            for v in list(shapes.graph.value_info) + list(shapes.graph.input)}
    layers = []
    for n in proto.graph.node:
        if n.op_type in ("Conv", "Gemm") and n.input[0] != "normalised":
            attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
            shape = dims.get(n.input[0])
            if shape is None:  # Gemm after Flatten: [T*N, features]
                shape = [batch * model.timesteps, inits[n.input[1]].shape[1]]
            shape[0] = batch * model.timesteps
            layers.append({"name": n.output[0], "op": n.op_type, "w": inits[n.input[1]], "b": inits[n.input[2]],
                           "attrs": attrs, "in_shape": shape})
    return layers


def _model(nodes, inits, x_type, x_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "layer", [helper.make_tensor_value_info("x", x_type, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return m  # onnxruntime checks it when the session is made


def build(form: str, layer: dict, y_range: float) -> tuple[onnx.ModelProto, str] | None:
    """(graph, input kind "f32" | "u8") of ``layer`` written as ``form``; None where the form does not apply."""
    w, b, attrs, op = layer["w"], layer["b"], layer["attrs"], layer["op"]
    q, s = quantise(w)
    cout = len(w)
    conv = op == "Conv"
    bshape = [1, cout] + [1] * (w.ndim - 2) if conv else [cout]
    t = lambda a, n: numpy_helper.from_array(np.ascontiguousarray(a), n)  # noqa: E731
    conv_attrs = {k: v for k, v in attrs.items() if k in ("pads", "strides", "kernel_shape", "dilations")}
    if op == "Gemm":  # as a 1x1 problem: MatMul forms only
        if form in ("fp32", "fp32-deq"):
            wt = w if form == "fp32" else q.astype(np.float32) * s[:, None]
            return _model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)],
                          [t(wt.astype(np.float32), "w"), t(b, "b")], TensorProto.FLOAT, layer["in_shape"]), "f32"
        if form != "matmulint":
            return None
    scale_bias = [helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", ["accf", "s"], ["ys"]), helper.make_node("Add", ["ys", "b"], ["y"])]
    whole = conv and attrs.get("pads", [0]) == [0] * 4 and list(layer["in_shape"][2:]) == list(w.shape[2:])
    k = int(np.prod(w.shape[1:]))
    if form == "fp32-gemm":
        if not whole:
            return None
        return _model([helper.make_node("Flatten", ["x"], ["xf"], axis=1),
                       helper.make_node("Gemm", ["xf", "w", "b"], ["y2"], transB=1),
                       helper.make_node("Reshape", ["y2", "shape"], ["y"])],
                      [t(w.reshape(cout, k), "w"), t(b, "b"), t(np.array([0, cout, 1, 1], np.int64), "shape")],
                      TensorProto.FLOAT, layer["in_shape"]), "f32"
    if form == "im2col-nhwc":
        if not conv or whole:
            return None
        n, c, hgt, wid = layer["in_shape"]
        kk = w.shape[2]
        nodes, inits, cols = _strided_patches(layer, t, nhwc=True)
        qm = np.ascontiguousarray(q.transpose(2, 3, 1, 0).reshape(kk * kk * c, cout))  # rows (i, j, c)
        nodes += [helper.make_node("Concat", cols, ["col"], axis=3),  # [N, Ho, Wo, k*k*C]
                  helper.make_node("MatMulInteger", ["col", "w", "xz", "wz"], ["acc"])] + scale_bias
        inits += [t(qm, "w"), t(np.uint8(0), "xz"), t(np.int8(0), "wz"), t(s, "s"), t(b, "b")]  # NHWC: [Cout] broadcasts
        return _model(nodes, inits, TensorProto.UINT8, [n, hgt, wid, c]), "u8-nhwc"
    if form == "im2col-s2d":
        n, c, hgt, wid = layer["in_shape"]
        kk, st, pad = w.shape[2], attrs.get("strides", [1])[0], attrs.get("pads", [0])[0]
        if not conv or whole or st == 1 or kk % st:
            return None
        ho, wo = (hgt + 2 * pad - kk) // st + 1, (wid + 2 * pad - kk) // st + 1
        hp, wp = -(-(hgt + 2 * pad) // st) * st, -(-(wid + 2 * pad) // st) * st  # padded up to a multiple of s
        kb = kk // st
        nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"]),
                 helper.make_node("Reshape", ["xp", "s6"], ["x6"]),  # [N, Hp/s, s, Wp/s, s, C]
                 helper.make_node("Transpose", ["x6"], ["x6t"], perm=[0, 1, 3, 2, 4, 5]),
                 helper.make_node("Reshape", ["x6t", "s4"], ["xs"])]  # [N, Hp/s, Wp/s, s*s*C], channels (di, dj, c)
        inits = [t(np.array([0, pad, pad, 0, 0, hp - hgt - pad, wp - wid - pad, 0], np.int64), "pads"),
                 t(np.array([0, hp // st, st, wp // st, st, c], np.int64), "s6"),
                 t(np.array([0, hp // st, wp // st, st * st * c], np.int64), "s4"), t(np.array([1, 2], np.int64), "axes")]
        cols = []
        for a_ in range(kb):
            for b_ in range(kb):
                inits += [t(np.array([a_, b_], np.int64), f"st{a_}{b_}"), t(np.array([a_ + ho, b_ + wo], np.int64), f"en{a_}{b_}")]
                nodes.append(helper.make_node("Slice", ["xs", f"st{a_}{b_}", f"en{a_}{b_}", "axes"], [f"p{a_}{b_}"]))
                cols.append(f"p{a_}{b_}")
        # rows ordered (a, b, di, dj, c) for kernel tap (i, j) = (s a + di, s b + dj)
        q6 = q.reshape(cout, c, kb, st, kb, st)  # [o, c, a, di, b, dj]
        qm = np.ascontiguousarray(q6.transpose(2, 4, 3, 5, 1, 0).reshape(kk * kk * c, cout))
        nodes += [helper.make_node("Concat", cols, ["col"], axis=3),
                  helper.make_node("MatMulInteger", ["col", "w", "xz", "wz"], ["acc"])] + scale_bias
        inits += [t(qm, "w"), t(np.uint8(0), "xz"), t(np.int8(0), "wz"), t(s, "s"), t(b, "b")]
        return _model(nodes, inits, TensorProto.UINT8, [n, hgt, wid, c]), "u8-nhwc"
    if form in ("im2col-bmm", "im2col-t"):
        if not conv or whole:
            return None
        n, c, hgt, wid = layer["in_shape"]
        kk, st, pad = w.shape[2], attrs.get("strides", [1])[0], attrs.get("pads", [0])[0]
        ho, wo = (hgt + 2 * pad - kk) // st + 1, (wid + 2 * pad - kk) // st + 1
        nodes, inits, cols = _strided_patches(layer, t, nhwc=False)
        nodes.append(helper.make_node("Concat", cols, ["col"], axis=1))  # [N, k*k*C, Ho, Wo], rows (i, j, c)
        qm = np.ascontiguousarray(q.transpose(0, 2, 3, 1).reshape(cout, kk * kk * c))  # [Cout, (i, j, c)]
        if form == "im2col-bmm":
            nodes += [helper.make_node("Reshape", ["col", "cshape"], ["col3"]),
                      helper.make_node("MatMulInteger", ["w", "col3", "wz", "xz"], ["acc3"]),  # [N, Cout, Ho*Wo]
                      helper.make_node("Reshape", ["acc3", "oshape"], ["acc"])] + scale_bias
            inits += [t(qm, "w"), t(np.array([0, kk * kk * c, ho * wo], np.int64), "cshape"),
                      t(np.array([0, cout, ho, wo], np.int64), "oshape"), t(np.uint8(0), "xz"), t(np.int8(0), "wz"),
                      t(s.reshape(1, -1, 1, 1), "s"), t(b.reshape(1, -1, 1, 1), "b")]
            return _model(nodes, inits, TensorProto.UINT8, layer["in_shape"]), "u8"
        nodes += [helper.make_node("Transpose", ["col"], ["colt"], perm=[0, 2, 3, 1]),
                  helper.make_node("MatMulInteger", ["colt", "w", "xz", "wz"], ["acc"])] + scale_bias
        inits += [t(np.ascontiguousarray(qm.T), "w"), t(np.uint8(0), "xz"), t(np.int8(0), "wz"), t(s, "s"), t(b, "b")]
        return _model(nodes, inits, TensorProto.UINT8, layer["in_shape"]), "u8"
    if form == "fp32":
        return _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **conv_attrs)], [t(w, "w"), t(b, "b")],
                      TensorProto.FLOAT, layer["in_shape"]), "f32"
    if form == "fp32-deq":
        wd = (q.astype(np.float32) * s.reshape(-1, 1, 1, 1)).astype(np.float32)
        return _model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **conv_attrs)], [t(wd, "w"), t(b, "b")],
                      TensorProto.FLOAT, layer["in_shape"]), "f32"
    sb = [t(s.reshape(bshape), "s"), t(b.reshape(bshape), "b")]
    if form == "convint-u8":
        return _model([helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["acc"], **conv_attrs)] + scale_bias,
                      [t((q.astype(np.int16) + 128).astype(np.uint8), "w"), t(np.uint8(0), "xz"),
                       t(np.uint8(128), "wz")] + sb, TensorProto.UINT8, layer["in_shape"]), "u8"
    if form == "convint-s8":
        return _model([helper.make_node("ConvInteger", ["x", "w", "xz", "wz"], ["acc"], **conv_attrs)] + scale_bias,
                      [t(q, "w"), t(np.uint8(0), "xz"), t(np.int8(0), "wz")] + sb, TensorProto.UINT8,
                      layer["in_shape"]), "u8"
    if form == "matmulint":
        if conv and not whole:
            return None  # only a conv whose kernel covers its whole input is one MatMul
        nodes = [helper.make_node("Flatten", ["x"], ["xf"], axis=1),
                 helper.make_node("MatMulInteger", ["xf", "w", "xz", "wz"], ["acc"])] + scale_bias[:2] + \
                [helper.make_node("Add", ["ys", "b"], ["y2"] if conv else ["y"])]
        inits = [t(np.ascontiguousarray(q.reshape(cout, k).T), "w"), t(np.uint8(0), "xz"), t(np.int8(0), "wz"),
                 t(s, "s"), t(b, "b")]
        if conv:
            nodes.append(helper.make_node("Reshape", ["y2", "shape"], ["y"]))
            inits.append(t(np.array([0, cout, 1, 1], np.int64), "shape"))
        return _model(nodes, inits, TensorProto.UINT8, layer["in_shape"]), "u8"
    dq_x = helper.make_node("DequantizeLinear", ["x", "one", "xz"], ["xd"])
    dq_w = helper.make_node("DequantizeLinear", ["q", "sw", "wz"], ["wd"], axis=0)
    qinits = [t(np.float32(1.0), "one"), t(np.uint8(0), "xz"), t(q, "q"), t(s, "sw"), t(np.zeros(cout, np.int8), "wz")]
    if form == "qdq":
        return _model([dq_x, dq_w, helper.make_node("Conv", ["xd", "wd", "b"], ["y"], **conv_attrs)],
                      qinits + [t(b, "b")], TensorProto.UINT8, layer["in_shape"]), "u8"
    # lossy forms: the output is quantised to uint8 with a scale covering [-y_range, y_range]
    ys, yz = np.float32(2 * y_range / 255.0), np.uint8(128)
    bq = np.rint(b / s).astype(np.int32)  # bias in the int32 accumulator's scale (1 * s)
    if form == "qdq-out":
        bdq = helper.make_node("DequantizeLinear", ["bq", "sw", "bz"], ["bd"], axis=0)
        return _model([dq_x, dq_w, bdq, helper.make_node("Conv", ["xd", "wd", "bd"], ["yc"], **conv_attrs),
                       helper.make_node("QuantizeLinear", ["yc", "ys", "yz"], ["yq"]),
                       helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])],
                      qinits + [t(bq, "bq"), t(np.zeros(cout, np.int32), "bz"), t(ys, "ys"), t(yz, "yz")],
                      TensorProto.UINT8, layer["in_shape"]), "u8"
    if form == "qlinearconv":
        return _model([helper.make_node("QLinearConv", ["x", "one", "xz", "q", "sw", "wz", "ys", "yz", "bq"], ["yq"],
                                        **conv_attrs),
                       helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["y"])],
                      qinits + [t(bq, "bq"), t(ys, "ys"), t(yz, "yz")], TensorProto.UINT8, layer["in_shape"]), "u8"
    raise ValueError(form)


def _strided_patches(layer: dict, t, nhwc: bool) -> tuple[list, list, list[str]]:
    """Pad the uint8 input ``x`` and take the k^2 strided Slices of the conv's taps: (nodes, inits, names)."""
    w, attrs = layer["w"], layer["attrs"]
    _, _, hgt, wid = layer["in_shape"]
    kk, st, pad = w.shape[2], attrs.get("strides", [1])[0], attrs.get("pads", [0])[0]
    ho, wo = (hgt + 2 * pad - kk) // st + 1, (wid + 2 * pad - kk) // st + 1
    pads = [0, pad, pad, 0, 0, pad, pad, 0] if nhwc else [0, 0, pad, pad, 0, 0, pad, pad]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"])]
    inits = [t(np.array(pads, np.int64), "pads"), t(np.array([1, 2] if nhwc else [2, 3], np.int64), "axes"),
             t(np.array([st, st], np.int64), "steps")]
    cols = []
    for i in range(kk):
        for j in range(kk):
            inits += [t(np.array([i, j], np.int64), f"st{i}{j}"),
                      t(np.array([i + st * (ho - 1) + 1, j + st * (wo - 1) + 1], np.int64), f"en{i}{j}")]
            nodes.append(helper.make_node("Slice", ["xp", f"st{i}{j}", f"en{i}{j}", "axes", "steps"], [f"p{i}{j}"]))
            cols.append(f"p{i}{j}")
    return nodes, inits, cols


def exact_reference(layer: dict, x01: np.ndarray) -> np.ndarray:
    """float32(float32(acc) * s) + b with acc the exact integer sum (float64 conv of integers is exact here)."""
    q, s = quantise(layer["w"])
    xt = torch.from_numpy(x01.astype(np.float64))
    qt = torch.from_numpy(q.astype(np.float64))
    if layer["op"] == "Gemm":
        acc = (xt @ qt.T).numpy()
        shape = (-1,)
    else:
        a = layer["attrs"]
        acc = torch.nn.functional.conv2d(xt, qt, stride=a.get("strides", [1])[0], padding=a.get("pads", [0])[0]).numpy()
        shape = (-1, 1, 1)
    y = acc.astype(np.float32) * s.reshape(shape)
    return y.astype(np.float32) + layer["b"].reshape(shape)


def profile_ops(proto: onnx.ModelProto, feed: dict, threads: int, runs: int) -> dict[str, float]:
    """ms per run of each kernel onnxruntime ran (profiler op_name), after 3 warm-up runs."""
    return kernel_ms(lambda prefix: _session(proto, threads, prefix), feed, runs)


def _session(proto: onnx.ModelProto, threads: int, profile: str | None = None):
    """The product's onnxruntime session (:func:`gee_deploy.ort_session.create_session`) over ``proto``."""
    return create_session(proto.SerializeToString(), threads=threads, profile_prefix=profile)


def run(batch: int = 64, threads: int = 1, forms=FORMS, rounds: int = 6, density: float = 0.15) -> list[dict]:
    """Rows: layer, form, p50 ms, ratio to fp32, kernels run, max |diff| to the exact int8 result."""
    torch.manual_seed(0)
    model = create_model("smallnet", genes=40, timesteps=4)
    rng = np.random.default_rng(0)
    rows = []
    for layer in body_layers(model, batch):
        x01 = (rng.random(layer["in_shape"]) < density).astype(np.float32)  # spikes, ~15% active
        exact = exact_reference(layer, x01)
        y_range = float(np.abs(exact).max())
        sessions, protos = {}, {}
        for form in forms:
            try:
                built = build(form, layer, y_range)
            except ValueError as e:
                rows.append({"layer": layer["name"], "form": form, "error": str(e).splitlines()[0][:80]})
                continue
            if built is None:
                continue
            proto, kind = built
            u8 = x01.astype(np.uint8)
            feed = {"x": x01 if kind == "f32" else np.ascontiguousarray(u8.transpose(0, 2, 3, 1)) if kind == "u8-nhwc" else u8}
            try:
                sessions[form] = (_session(proto, threads), feed)
            except Exception as e:  # a form this onnxruntime has no kernel for
                rows.append({"layer": layer["name"], "form": form, "error": str(e).splitlines()[0][:120]})
                continue
            protos[form] = proto
        runs = {form: (lambda s=s, feed=feed: s.run(None, feed)) for form, (s, feed) in sessions.items()}
        times = interleaved(runs, rounds, max(3, 64 // batch), clock(threads))
        best = {f: best_block(v) for f, v in times.items()}
        base = best["fp32"]
        for form, (s, feed) in sessions.items():
            y = s.run(None, feed)[0]
            y = y.transpose(0, 3, 1, 2) if form in ("im2col-nhwc", "im2col-s2d", "im2col-t") else y.reshape(exact.shape)
            rows.append({"layer": layer["name"], "shape": "x".join(map(str, layer["in_shape"])) + " -> "
                         + "x".join(map(str, layer["w"].shape)), "form": form,
                         "p50_ms": float(np.median(times[form]) * 1e3), "best_ms": float(best[form] * 1e3),
                         "vs_fp32": float(base / best[form]),
                         "max_diff_vs_exact": float(np.abs(y - exact).max()),
                         "bit_identical": bool(np.array_equal(y, exact)),
                         "kernels": profile_ops(protos[form], feed, threads, 10)})
    return rows


def gemm_peaks(m: int = 4096, k: int = 1024, n: int = 1024, runs: int = 8) -> dict[str, float]:
    """GMAC/s of onnxruntime's MatMulInteger per (A, B) type pair and of torch's sgemm (2048^2), 1 thread,
    thread CPU time: which int8 combination has a fast kernel on this CPU."""
    out = {}
    types = {"u8": (TensorProto.UINT8, np.uint8), "s8": (TensorProto.INT8, np.int8)}
    rng = np.random.default_rng(0)
    for a_name, b_name in (("u8", "s8"), ("u8", "u8"), ("s8", "s8")):
        (at, an), (bt, bn) = types[a_name], types[b_name]
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])], "mm",
            [helper.make_tensor_value_info("a", at, [m, k])], [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])],
            [numpy_helper.from_array(rng.integers(0, 100, (k, n)).astype(bn), "b"),
             numpy_helper.from_array(np.array(0, an), "az"), numpy_helper.from_array(np.array(0, bn), "bz")])
        s = _session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), 1)
        a = rng.integers(0, 2, (m, k)).astype(an)
        s.run(None, {"a": a})
        best = min(call_seconds(lambda: s.run(None, {"a": a})) for _ in range(runs))
        out[f"MatMulInteger {a_name} x {b_name}"] = m * k * n / best / 1e9
    torch.set_num_threads(1)
    x = torch.randn(2048, 2048)
    x @ x
    out["torch sgemm fp32"] = 2048 ** 3 / min(call_seconds(lambda: x @ x) for _ in range(5)) / 1e9
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| layer | form | p50 ms | best block ms | vs fp32 (best) | max abs diff to exact int8 | bit-identical | "
             "kernels (ms per run) |", "|---|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['layer']} | {r['form']} | - | - | - | - | - | not run: {r['error']} |")
            continue
        k = ", ".join(f"{n} {v:.3f}" for n, v in r["kernels"].items())
        lines.append(f"| {r['layer']} ({r['shape']}) | {r['form']} | {r['p50_ms']:.3f} | {r['best_ms']:.3f} | "
                     f"{r['vs_fp32']:.2f}x | "
                     f"{r['max_diff_vs_exact']:.3g} | {'yes' if r['bit_identical'] else 'no'} | {k} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="samples; the layers see T * batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--forms", nargs="+", default=list(FORMS), choices=FORMS)
    p.add_argument("--peaks", action="store_true", help="only the GEMM peak table (GMAC/s per type pair)")
    a = p.parse_args()
    if a.peaks:
        print("| kernel (1 thread) | GMAC/s |\n|---|---:|")
        print("\n".join(f"| {k} | {v:.0f} |" for k, v in gemm_peaks().items()))
        return
    print(markdown(run(a.batch, a.threads, tuple(dict.fromkeys(["fp32", *a.forms])), a.rounds)))


if __name__ == "__main__":
    main()
