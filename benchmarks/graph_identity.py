"""Save, then compare, the ONNX graphs of every zoo model: did a refactor leave the exporter's output as it was?

    python benchmarks/graph_identity.py save DIR       # at the old commit (a git worktree)
    python benchmarks/graph_identity.py compare DIR    # at the new one

Every registered model, genetic (g = 4) and its dense twin, every variant (dense, factorised, auto; the twin
only dense), unrolled and streaming, seeded and tiny (T = 2, 4 classes, small images): one file per graph.
``compare`` prints, for each graph that is not byte-identical, whether its nodes (op, inputs, outputs,
attributes), its initializers and its metadata are equal, and the number of differing graphs.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import onnx
import torch

from gee_deploy.export import build_onnx
from gee_deploy.zoo import create_model, list_models

SMALL_IMAGES = {"cifarnet": 8, "resnet18": 8, "resnet19": 8, "resnet34": 32, "vgg11": 32, "vgg16": 32}


def graphs():
    """(file name, serialised graph) of every model x twin x variant x streaming."""
    for name in list_models():
        for genes in (4, 0):
            torch.manual_seed(0)
            kw = {"image_size": SMALL_IMAGES[name]} if name in SMALL_IMAGES else {}
            model = create_model(name, genes=genes, timesteps=2, num_classes=4, **kw).eval()
            for variant in (("dense", "factorised", "auto") if genes else ("dense",)):
                for streaming in (False, True):
                    proto, _ = build_onnx(model, variant, streaming=streaming)
                    yield f"{name}-g{genes}-{variant}-{int(streaming)}.onnx", proto.SerializeToString()


def _parts(data: bytes) -> tuple[list, list, dict]:
    g = onnx.load_from_string(data)
    nodes = [(n.op_type, list(n.input), list(n.output), str(n.attribute)) for n in g.graph.node]
    return nodes, [t.SerializeToString() for t in g.graph.initializer], {p.key: p.value for p in g.metadata_props}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=("save", "compare"))
    p.add_argument("dir", type=Path)
    a = p.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    differ = 0
    for file, data in graphs():
        path = a.dir / file
        if a.mode == "save":
            path.write_bytes(data)
            continue
        old = path.read_bytes()
        if old != data:
            differ += 1
            same = [x == y for x, y in zip(_parts(old), _parts(data))]
            print(f"{file}: nodes equal {same[0]}, initializers equal {same[1]}, metadata equal {same[2]}")
    print(f"{a.mode}d {len(list(a.dir.glob('*.onnx')))} graphs; differing: {differ}")


if __name__ == "__main__":
    main()
