"""Parity of a `gee-deploy quantize` checkpoint's int8 exports with its PyTorch model on a whole test split: both
int8 forms, both storages, on onnxruntime's CPU provider and on OpenVINO (onnxruntime's OpenVINO execution
provider plugin, f32 inference precision; where the plugin offers no CPU device, OpenVINO's own runtime with the
same properties, ``int8_engines.OpenVINOSession``).

    gee-deploy train demo --out runs/demo --quiet --set train.epochs=1
    gee-deploy quantize runs/demo/best.pt --out runs/demo/q.pt
    python benchmarks/int8_parity.py runs/demo/q.pt                        # all 10,000 Fashion-MNIST test images

Per export and runtime: top-1 agreement with the PyTorch model (and the images whose top-1 differs), the largest
|logit difference|, total spikes of the graph and of PyTorch, the fraction of images with logits within 1e-4 and
equal spike counts, whether the project's fp32 validation limits (:class:`gee_deploy.parity.Thresholds`) pass, and
whether the outputs are bit-identical to the integer form's on onnxruntime's CPU provider. Then, for the images
whose spikes differ, the first spike map that differs (the fp32 stem's LIF, or an int8 layer's), where the graph
keeps every LIF's float spike map (an integer-form graph keeps only those a float layer reads).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from onnx import helper

from gee_deploy.checkpoint import load_model
from gee_deploy.data import load_test_arrays
from gee_deploy.export import build_onnx
from gee_deploy.neurons import LIF, SpikeRecorder
from gee_deploy.ort_session import create_session, import_onnxruntime, openvino_session_options, openvino_unavailable
from int8_engines import OpenVINOSession  # this directory is on sys.path when run as a script
from gee_deploy.parity import EXPORT_GATES, Outputs, Thresholds, checks, compare

BATCH = 500


def run_graph(proto, runtime: str, images: np.ndarray, extra: list[str] = ()) -> list[np.ndarray]:
    """Every output of ``proto`` (plus the tensors ``extra``) over ``images`` in batches, concatenated on axis 0
    (the spike maps of a T-step graph are [T * N, ...] per batch: kept per batch as [T, N, ...])."""
    for name in extra:
        proto.graph.output.append(helper.make_empty_tensor_value_info(name))
    model = proto.SerializeToString()
    if runtime == "ort-cpu":
        session = create_session(model, threads=1)
    elif openvino_unavailable() is not None:  # the plugin offers no CPU device here: OpenVINO's own runtime
        session = OpenVINOSession(model, "f32", 1)
    else:
        session = import_onnxruntime().InferenceSession(model, openvino_session_options(threads=1))
    outs = [session.run(None, {"input": images[i:i + BATCH]}) for i in range(0, len(images), BATCH)]
    return [np.concatenate([o[j] for o in outs]) if j < 2 else [o[j] for o in outs]
            for j in range(len(outs[0]))]


def reference(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, list[np.ndarray]]]:
    """PyTorch logits, spike counts and each LIF's spike maps per batch."""
    maps: dict[str, list[np.ndarray]] = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: maps.setdefault(n, []).append(o.numpy()))
             for n, m in model.named_modules() if isinstance(m, LIF)]
    logits, counts = [], []
    with torch.no_grad():
        for i in range(0, len(images), BATCH):
            with SpikeRecorder(model) as rec:
                logits.append(model(torch.from_numpy(images[i:i + BATCH])).numpy())
            counts.append(rec.stacked().numpy())
    for h in hooks:
        h.remove()
    return np.concatenate(logits), np.concatenate(counts), maps


def first_divergence(graph_maps: list[list[np.ndarray]], ref_maps: list[list[np.ndarray]], names: list[str],
                     steps: int) -> dict[str, int]:
    """How many images first differ (in any spike) at each LIF, in graph order."""
    first = dict.fromkeys(names, 0)
    for b in range(len(graph_maps[0])):
        seen = None
        for name, g, r in zip(names, graph_maps, ref_maps):
            n = g[b].shape[0] // steps
            differs = (g[b].reshape(steps, n, -1) != r[b].reshape(steps, n, -1)).any(axis=(0, 2))
            new = differs if seen is None else differs & ~seen
            first[name] += int(new.sum())
            seen = differs if seen is None else seen | differs
    return first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--dataset", default="fashion-mnist")
    p.add_argument("--images", type=int, default=None, help="first N test images (default: all)")
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.checkpoint).eval()
    images, labels = load_test_arrays(args.dataset, None, args.images)
    logits, counts, ref_maps = reference(model, images)
    ref = Outputs(logits, counts, labels)
    print(f"{args.checkpoint} on {len(images):,} {args.dataset} test images; PyTorch accuracy {ref.accuracy:.4f}, "
          f"{counts.sum(dtype=np.float64):,.0f} spikes\n")
    print("| form | storage | runtime | top-1 agreement | images with another top-1 | max abs logit diff | "
          "spikes graph / PyTorch | images matching | fp32 limits | = integer on ort-cpu |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|---|")
    base, divergence = None, {}
    for form in ("integer", "qdq"):
        for storage in ("folded", "genetic"):
            for runtime in ("ort-cpu", "openvino-f32"):
                proto, spec = build_onnx(model, "int8", storage=storage, int8_form=form)
                lif_maps = [o for n in proto.graph.node for o in n.output if o.endswith(".spikes")]
                outs = run_graph(proto, runtime, images, lif_maps)
                got = Outputs(outs[0], outs[1], labels)
                m = compare(ref, got)
                ok = all(c.ok for c in checks(m, Thresholds(), EXPORT_GATES))
                base = base or outs[:2]
                same = all(np.array_equal(a, b) for a, b in zip(outs[:2], base))
                print(f"| {form} | {storage} | {runtime} | {m.top1_agreement:.4f} "
                      f"| {int(round((1 - m.top1_agreement) * m.samples))} | {m.max_logit_diff:.3g} "
                      f"| {m.spikes_deployed:,.0f} / {m.spikes_reference:,.0f} | {m.match_fraction:.4f} "
                      f"| {'pass' if ok else 'FAIL'} | {same} |")
                if m.match_fraction < 1 and len(lif_maps) == len(ref_maps):  # where the first difference is
                    divergence[form, storage, runtime] = first_divergence(
                        outs[2:], [ref_maps[n[:-len('.spikes')]] for n in lif_maps], lif_maps, model.timesteps)
    if not divergence:
        return
    print("\nimages whose spikes differ from PyTorch's, by the first spike map that differs "
          f"(layers: {', '.join(f'{l.name} {l.precision}' for l in spec.layers)}):\n")
    for key, first in divergence.items():
        print(f"  {' / '.join(key)}: {first}")


if __name__ == "__main__":
    main()
