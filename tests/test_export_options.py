"""One options object from the CLI to the writer: every export choice is checked once, where it arrives.

The tests run real exports (`gee-deploy export` through click) under a profiler hook that records every call of
a gee_deploy function, by code object, so a second check is counted however it is imported or called.
"""
from __future__ import annotations

import inspect
import sys
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner

from gee_deploy.cli import cli
from gee_deploy.export import options as export_options_module
from gee_deploy.export.options import ExportOptions, export_options

PACKAGE = Path(export_options_module.__file__).resolve().parents[1]
CHECKERS = ("check_format", "check_variant", "check_opset", "check_storage")
# the export path: the modules an export's options travel through (loading the checkpoint's model, the zoo's
# constructors taking its recipe's settings, is the checkpoint loader's business, not the export's)
EXPORT_PATH = [PACKAGE / "export", PACKAGE / "nir", PACKAGE / "formats.py", PACKAGE / "commands"]
# functions there that may take more than 6 parameters, and why: the click command receives every option as a
# parameter and the builder receives the user's input (that is where the options arrive and are checked);
# the graph emitters take one layer's or one node's data (modules, shapes, ONNX attributes), no options
WIDE = {"export", "export_options", "OnnxWriter.emit_weight", "NIRWriter.emit_weight", "emit_factorised",
        "GraphBuilder.op"}


@contextmanager
def recorded_calls(*paths: Path):
    """Counter of qualname -> calls, and qualname -> parameter count (``self`` / ``cls`` not counted), of every
    function defined under ``paths`` (default: the export path) called inside the block (this thread)."""
    paths = paths or tuple(EXPORT_PATH)
    calls: Counter = Counter()
    params: dict[str, int] = {}

    def hook(frame, event, arg):
        if event != "call":
            return
        code = frame.f_code
        if not any(code.co_filename.startswith(str(p)) for p in paths):
            return
        name = code.co_qualname
        calls[name] += 1
        if name not in params:
            n = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & inspect.CO_VARARGS) + \
                bool(code.co_flags & inspect.CO_VARKEYWORDS)
            params[name] = n - (code.co_varnames[:1] in (("self",), ("cls",)))

    sys.setprofile(hook)
    try:
        yield calls, params
    finally:
        sys.setprofile(None)


def _export(args: list[str]) -> None:
    result = CliRunner().invoke(cli, ["export", *args], standalone_mode=False, catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("flags", [["--variant", "auto", "--streaming", "--storage", "folded"],
                                   ["--variant", "int8"],
                                   ["--format", "nir"]],
                         ids=["auto-streaming", "int8-default-storage", "nir"])
def test_each_choice_is_checked_once_from_the_cli_to_the_writer(tiny_checkpoint, tmp_path, flags):
    out = tmp_path / ("m.nir" if "nir" in flags else "m.onnx")
    with recorded_calls() as (calls, params):
        _export([str(tiny_checkpoint), "--out", str(out), "--samples", "16", *flags])
    assert out.is_file()
    assert {name: calls[name] for name in CHECKERS} == dict.fromkeys(CHECKERS, 1)
    assert calls["export_options"] == 1
    writer = "write_nir" if "nir" in flags else "write_graph"
    assert calls[writer] >= 1  # the walk reached the writer
    wide = {name: n for name, n in params.items() if n > 6 and name not in WIDE}
    assert not wide, f"functions on the export path with more than 6 parameters: {wide}"


def test_the_counter_sees_a_second_check(tiny_checkpoint, tmp_path, monkeypatch):
    """The spy is not blind: a check added below the entry point, imported by name, is counted."""
    import gee_deploy.export.api as api
    from gee_deploy.export.options import check_opset

    real = api.onnx_graph

    def checks_again(model, options, storage, **kw):
        check_opset(options.opset, options.format)
        return real(model, options, storage, **kw)

    monkeypatch.setattr(api, "onnx_graph", checks_again)
    with recorded_calls() as (calls, _):
        _export([str(tiny_checkpoint), "--out", str(tmp_path / "m.onnx"), "--samples", "16"])
    assert calls["check_opset"] == 2


def test_the_python_api_checks_once_and_takes_the_options_object(tiny_checkpoint, tmp_path):
    from gee_deploy.formats import export_model

    with recorded_calls() as (calls, _):
        report = export_model(tiny_checkpoint, tmp_path / "m.onnx", variant="factorised", samples=16)
    assert {name: calls[name] for name in CHECKERS} == dict.fromkeys(CHECKERS, 1)
    assert report.variant == "factorised" and report.layers and all(hasattr(l, "macs") for l in report.layers)
    options = export_options(variant="factorised", samples=16)
    with recorded_calls() as (calls, _):
        again = export_model(tiny_checkpoint, tmp_path / "n.onnx", options)
    assert not any(calls[name] for name in CHECKERS)  # built once by the caller, not re-checked
    assert again.layers == report.layers
    with pytest.raises(TypeError, match="either options or keywords"):
        export_model(tiny_checkpoint, tmp_path / "o.onnx", options, variant="dense")


def test_the_options_are_frozen_typed_values():
    options = export_options(out="m.plan", variant="auto", allow_int8=False, opset=None, storage="folded")
    assert isinstance(options, ExportOptions)
    assert options.format.name == "tensorrt" and options.variant.name == "auto" and options.opset == 18
    assert options.storage == "folded" and type(options.storage).__name__ == "Storage"
    with pytest.raises(AttributeError):
        options.opset = 19  # frozen
    nir = export_options(fmt="nir")
    assert nir.opset == 0 and nir.format.fixed_graph
