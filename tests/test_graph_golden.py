"""Golden graphs: the exporter's graphs of seeded tiny zoo models compute exactly what they computed when
tests/data/graph_digests.json was written.

A refactor of the export path that means to change nothing must leave every digest as it is. The digest covers
what a graph computes: its opsets, inputs and outputs (names and types), every node's op, attributes and wiring,
and every initializer's dtype, shape and bytes; intermediate tensor and initializer names are replaced by their
order of first use (renaming or reordering initializers changes nothing computed), and the metadata is left out
(tests/test_spec.py covers it). When a change is meant to alter a graph, check the change (benchmarks of parity),
then rewrite the file with ``.venv/bin/python tests/test_graph_golden.py`` and say why in the commit.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import onnx
import pytest
import torch
from onnx import numpy_helper

from gee_deploy.export import build_onnx
from gee_deploy.zoo import create_model

GOLDEN = Path(__file__).parent / "data" / "graph_digests.json"

# (model, image size or None for its own, genes, variants, streaming forms, storages): SmallNet in every variant
# and form, its dense twin, the genetic storage's weight subgraph, and one graph of each other family
CASES = [("smallnet", None, 4, ("dense", "factorised", "auto", "int8"), (False, True), ("folded",)),
         ("smallnet", None, 4, ("dense",), (False,), ("genetic",)),
         ("smallnet", None, 0, ("dense",), (False, True), ("folded",)),
         ("resnet19", 8, 4, ("dense",), (False,), ("folded",)),
         ("vgg11", 32, 4, ("factorised",), (False,), ("folded",)),
         ("cifarnet", 8, 4, ("auto",), (True,), ("folded",))]


def graphs():
    """(name, ModelProto) of every case: seeded untrained models, T = 2, 4 classes."""
    for model_name, image_size, genes, variants, streams, storages in CASES:
        torch.manual_seed(0)
        kw = {"image_size": image_size} if image_size else {}
        model = create_model(model_name, genes=genes, timesteps=2, num_classes=4, **kw).eval()
        for variant in variants:
            for streaming in streams:
                for storage in storages:
                    proto, _ = build_onnx(model, variant, streaming=streaming, storage=storage)
                    yield f"{model_name}-g{genes}-{variant}-{'stream' if streaming else 'unrolled'}-{storage}", proto


def digest(proto: onnx.ModelProto) -> str:
    """sha256 of what ``proto`` computes (the module docstring says what that covers)."""
    g = proto.graph
    initializers = {t.name: t for t in g.initializer}
    names = {v.name: v.name for v in (*g.input, *g.output)}  # the graph's I/O names are its contract: kept

    def name(n: str, prefix: str) -> str:
        if n and n not in names:
            names[n] = f"{prefix}{len(names)}"
        return names.get(n, "")

    body = []
    for node in g.node:
        ins = [name(i, "w" if i in initializers else "t") for i in node.input]
        outs = [name(o, "t") for o in node.output]
        attrs = [a.SerializeToString().hex() for a in node.attribute]
        body.append([node.domain, node.op_type, ins, outs, attrs])
    weights = {names[n]: [t.data_type, list(t.dims), hashlib.sha256(numpy_helper.to_array(t).tobytes()).hexdigest()]
               for n, t in initializers.items() if n in names}
    unused = sorted(n for n in initializers if n not in names)
    io = [[v.name, v.type.SerializeToString().hex()] for v in (*g.input, *g.output)]
    opsets = sorted([o.domain, o.version] for o in proto.opset_import)
    text = json.dumps({"opsets": opsets, "io": io, "nodes": body, "weights": weights, "unused": unused},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.mark.slow
def test_exported_graphs_compute_what_the_golden_digests_say():
    golden = json.loads(GOLDEN.read_text())
    now = {name: digest(proto) for name, proto in graphs()}
    assert now.keys() == golden.keys()
    changed = sorted(name for name in now if now[name] != golden[name])
    assert not changed, f"these graphs compute something else than before: {changed} (see this module's docstring)"


def test_the_digest_sees_a_changed_weight_and_not_a_renamed_tensor():
    torch.manual_seed(0)
    proto, _ = build_onnx(create_model("smallnet", genes=4, timesteps=2, num_classes=4).eval(), "dense")
    before = digest(proto)
    renamed = onnx.ModelProto()
    renamed.CopyFrom(proto)
    old = renamed.graph.node[0].output[0]
    for node in renamed.graph.node:
        node.input[:] = ["renamed" if i == old else i for i in node.input]
        node.output[:] = ["renamed" if o == old else o for o in node.output]
    renamed.metadata_props[0].value = "another spec"
    assert digest(renamed) == before
    weight = renamed.graph.initializer[0]
    values = numpy_helper.to_array(weight).copy()
    values.flat[0] = values.flat[0] + 1
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    assert digest(renamed) != before


if __name__ == "__main__":  # rewrite the golden digests (only for a change meant to alter the graphs)
    GOLDEN.write_text(json.dumps({name: digest(proto) for name, proto in graphs()}, indent=1) + "\n")
    print(f"wrote {GOLDEN}", file=sys.stderr)
