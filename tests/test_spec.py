"""The deployment contract: ModelSpec round trips through ONNX metadata and sidecars, and says what is wrong."""
from __future__ import annotations

import json

import onnx
import pytest

from gee_deploy.errors import ModelFileError
from gee_deploy.kinds import ExportVariant, Form, LayerKind, Storage
from gee_deploy.spec import SPEC_FORMAT, LayerSpec, ModelSpec, sidecar_path

SPEC = ModelSpec(timesteps=4, input_shape=(1, 28, 28), class_names=("a", "b"), spiking_layers=("body.1", "body.3"),
                 neurons_per_layer=(512, 256),
                 layers=(LayerSpec(name="stem.0.0", kind=LayerKind.CONV, variant=ExportVariant.DENSE, macs=100,
                                   input_is_spikes=False, spiking_input_layer=None, spike_macs=100, calls=1,
                                   form=Form.DENSE, dense_macs=100, factorised_macs=None),
                         LayerSpec(name="body.2.0", kind=LayerKind.LINEAR, variant=ExportVariant.FACTORISED, macs=60,
                                   input_is_spikes=True, spiking_input_layer="body.1", spike_macs=20, calls=4,
                                   form=Form.LINEAR, dense_macs=80, factorised_macs=60)),
                 variant=ExportVariant.AUTO, model_name="smallnet", model_args={"genes": 8, "mean": [0.5]},
                 dataset="fashion-mnist",
                 checkpoint_sha256="ab" * 32)


def test_metadata_round_trip_is_exact():
    meta = SPEC.to_metadata()
    assert all(isinstance(v, str) for v in meta.values()) and all(k.startswith("gee.") for k in meta)
    assert ModelSpec.from_metadata(meta, "x") == SPEC
    assert SPEC.macs_per_sample == 100 + 60 * 4 and SPEC.dense_macs_per_sample == 100 + 80 * 4


def test_streaming_spec_names_its_state_io():
    stream = ModelSpec.from_metadata({**SPEC.to_metadata(), ModelSpec.key("streaming"): "true"}, "x")
    assert stream.state_inputs == ["v_in.body.1", "v_in.body.3"] and stream.state_outputs[0] == "v_out.body.1"
    assert json.loads(stream.to_metadata()[ModelSpec.key("state_inputs")]) == stream.state_inputs
    assert SPEC.state_inputs == []


def test_plan_sidecar_round_trip_without_tensorrt(tmp_path):
    """What `export --format tensorrt` writes beside a plan is what the TensorRT runtime reads back."""
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a real engine: the spec never reads it")
    side = SPEC.write_sidecar(plan)
    assert side == sidecar_path(plan) == tmp_path / "model.plan.json"
    assert ModelSpec.from_artefact(plan) == SPEC
    repo = tmp_path / "triton_model"
    repo.mkdir()
    SPEC.write_sidecar(repo)
    assert ModelSpec.from_artefact(repo) == SPEC and (repo / "spec.json").is_file()


def test_missing_or_malformed_specs_are_one_line_errors(tmp_path):
    with pytest.raises(ModelFileError, match=r"no model spec for .*model.plan: expected .*model.plan.json"):
        ModelSpec.from_artefact(tmp_path / "model.plan")
    meta = SPEC.to_metadata()
    del meta[ModelSpec.key("layers")]
    with pytest.raises(ModelFileError, match="lacks gee-deploy metadata .*gee.layers"):
        ModelSpec.from_metadata(meta, "m.onnx")
    with pytest.raises(ModelFileError, match="malformed"):
        ModelSpec.from_metadata({**SPEC.to_metadata(), ModelSpec.key("timesteps"): "four"}, "m.onnx")
    (tmp_path / "m.plan.json").write_text("{not json")
    with pytest.raises(ModelFileError, match="is not JSON"):
        ModelSpec.from_artefact(tmp_path / "m.plan")
    (tmp_path / "n.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ModelFileError, match="not a readable ONNX file"):
        ModelSpec.from_onnx(tmp_path / "n.onnx")
    with pytest.raises(KeyError):
        ModelSpec.key("timestep")


def test_exported_graph_carries_the_spec(serving_onnx):
    spec = ModelSpec.from_onnx(serving_onnx)
    graph = onnx.load(str(serving_onnx))
    assert [i.name for i in graph.graph.input] == [spec.input_name]
    assert [o.name for o in graph.graph.output] == list(spec.output_names)
    assert len(spec.spiking_layers) == graph.graph.output[1].type.tensor_type.shape.dim[1].dim_value


def _string_constants(path) -> list[str]:
    """String literals of a module, less dict keys (a Triton config's "input" field is not our tensor's name)."""
    import ast

    tree = ast.parse(path.read_text())
    keys = {id(k) for n in ast.walk(tree) if isinstance(n, ast.Dict) for k in n.keys if k is not None}
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
            and id(n) not in keys]


def test_names_and_keys_are_spelled_only_in_the_spec_module():
    """The graph's I/O names and the gee.* metadata keys live in gee_deploy/spec.py; everyone else imports them
    (a literal elsewhere is a second copy of the contract that can drift)."""
    from pathlib import Path

    import gee_deploy
    from gee_deploy.spec import INPUT_NAME, LOGITS, SPIKE_COUNTS

    root = Path(gee_deploy.__file__).parent
    deploy = ("export", "serving", "commands")  # "input" is also a genome population's name in the zoo
    offenders = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "spec.py" and path.parent == root:
            continue
        names = {LOGITS, SPIKE_COUNTS} | ({INPUT_NAME} if path.parent.name in deploy else set())
        for value in _string_constants(path):
            if value in names or value.startswith("gee."):
                offenders.append(f"{path.relative_to(root)}: {value!r}")
    assert not offenders, offenders


def test_artefacts_are_readable_by_other_users(tmp_path, serving_onnx):
    """mkstemp/mkdtemp make private files; an exported model must get the umask's usual mode (a Triton or
    serving container often runs as another user)."""
    import os
    import stat

    from gee_deploy.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "report.json", {"a": 1})
        SPEC.write_sidecar(tmp_path / "model.plan")
    finally:
        os.umask(old)
    for name in ("report.json", "model.plan.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


def test_metadata_carries_its_format_version_and_refuses_a_newer_one():
    """Written now: gee.format "1"; an export of b36eec0 (no gee.storage) reads through the same reader as
    folded; a newer version is one clear error naming the file."""
    from pathlib import Path

    meta = SPEC.to_metadata()
    assert meta[ModelSpec.key("format")] == SPEC_FORMAT == "1" and ModelSpec.key("storage") not in meta  # folded
    old = ModelSpec.from_onnx(Path(__file__).parent / "data" / "smallnet-g4-factorised-b36eec0.onnx")
    assert old.storage == Storage.FOLDED and old.variant == ExportVariant.FACTORISED
    with pytest.raises(ModelFileError, match="m.onnx has gee-deploy metadata format 2, written by a newer gee-deploy"):
        ModelSpec.from_metadata({**meta, ModelSpec.key("format"): "2"}, "m.onnx")
    with pytest.raises(ModelFileError, match="m.onnx has malformed gee-deploy metadata: format 'one'"):
        ModelSpec.from_metadata({**meta, ModelSpec.key("format"): "one"}, "m.onnx")
    del meta[ModelSpec.key("format")]
    with pytest.raises(ModelFileError, match="lacks gee-deploy metadata .gee.format."):
        ModelSpec.from_metadata(meta, "m.onnx")
