from __future__ import annotations

from typing import Annotated

import click
import onnx
from pydantic import Field

from ..export.configs import DEFAULT_OPSET, FORMATS, INT8_MIN_MACS, MIN_OPSET, VARIANTS, ValidationConfig
from ..export.configs import INT8_PTQ_THRESHOLDS as _I
from ..kinds import Int8Form, Storage
from ..triton_config import CPU_ACCELERATORS
from .nir_options import nir_import_options, nir_options
from .options import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    OutPath,
    Value,
    check_writable,
    data_dir_option,
    refuse_replacing,
    with_range,
)

OPSET = Annotated[int, Field(ge=MIN_OPSET, le=onnx.defs.onnx_opset_version())]
_SAMPLES = ValidationConfig().samples


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option(
    "--out",
    "-o",
    required=True,
    type=OutPath(directory=None),
    help="The .onnx file (onnx), repository directory (triton), .plan file (tensorrt) or .nir file (nir); its "
    "folder must exist, and it may not be the checkpoint or another input.",
)
@click.option(
    "--variant",
    default="dense",
    show_default=True,
    type=click.Choice([str(v) for v in VARIANTS]),
    help="; ".join(f"{v.name}: {v.help}" for v in VARIANTS.values()) + ".",
)
@click.option(
    "--allow-int8",
    is_flag=True,
    help=f"With --variant auto: spike-reading layers of at least {INT8_MIN_MACS:,} MACs per call get int8 weights.",
)
@click.option(
    "--int8-form",
    type=click.Choice([f.value for f in Int8Form]),
    default=None,
    help="How int8 layers are spelt. integer: onnxruntime's MatMulIntegerToFloat on uint8 spikes (its CPU "
    "int8 kernels, scale and bias in the GEMM); qdq: QuantizeLinear/DequantizeLinear around Conv/Gemm "
    "(TensorRT, OpenVINO). Both compute the same exact integer sums. Default: qdq for tensorrt, integer otherwise.",
)
@click.option(
    "--storage",
    type=click.Choice([s.value for s in Storage]),
    default=None,
    help="What the file holds. genetic: E once per population, G, the scales and BatchNorm parameters, "
    "and a constant subgraph that computes the weights when a session loads the file (same weights, "
    "bit for bit, at folded speed); folded: the computed weights (the only choice for a dense twin, "
    "tensorrt and nir). Default: genetic for a genetic checkpoint's onnx/triton export; with int8 "
    "layers, whichever file is smaller (a note says when that is folded).",
)
@click.option(
    "--format",
    "fmt",
    default=None,
    type=click.Choice([str(f) for f in FORMATS]),
    help="What to write: "
    + "; ".join(f"{f.name}: {f.help}" for f in FORMATS.values())
    + ". Default: the format --out's suffix names (.onnx, .plan, .nir); any other suffix needs "
    "--format triton (a directory) or is refused (see docs/export.md).",
)
@click.option(
    "--opset", type=Value(OPSET), default=None, help=with_range(f"ONNX opset, default {DEFAULT_OPSET}", OPSET)
)
@click.option("--streaming", is_flag=True, help="One timestep per call, membrane potentials as graph inputs/outputs.")
@click.option(
    "--atol",
    type=Value(NON_NEGATIVE),
    default=None,
    help="Max abs logit difference for a validation sample to count as matching (fp32 limits; a "
    "post-training int8 export does not gate on matching samples).",
)
@click.option(
    "--samples",
    type=Value(AT_LEAST_ONE),
    default=None,
    help=f"Test images to validate on (default {_SAMPLES}; at most the test split's size).",
)
@data_dir_option("Where the checkpoint's dataset lives (default: its standard place).")
@click.option("--profile", is_flag=True, help="With --variant auto: choose per layer by measured latency.")
@click.option(
    "--max-batch-size",
    type=Value(AT_LEAST_ONE),
    default=64,
    show_default=True,
    help="Triton max_batch_size / TensorRT optimisation profile maximum.",
)
@click.option("--fp16", is_flag=True, help="TensorRT: build an FP16 plan.")
@click.option(
    "--triton-accelerator",
    type=click.Choice(list(CPU_ACCELERATORS)),
    default=None,
    help="Triton: run the model on onnxruntime's OpenVINO execution provider (config.pbtxt's "
    "cpu_execution_accelerator).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@nir_options
def export(
    checkpoint,
    out,
    variant,
    allow_int8,
    int8_form,
    storage,
    fmt,
    opset,
    streaming,
    atol,
    samples,
    data_dir,
    profile,
    max_batch_size,
    fp16,
    triton_accelerator,
    as_json,
    **nir,
):
    """Export CHECKPOINT to ONNX (T timesteps unrolled, BatchNorm folded), a Triton repository, a TensorRT
    plan or a NIR graph, and validate it against the PyTorch model on test images of the checkpoint's dataset.
    CHECKPOINT may also be a .nir file from any framework (docs/nir.md): unrolled over --timesteps and validated
    against the spec-only NIR executor.

    Nothing is written unless validation passes; failures are listed together and exit with status 1 (with
    --json, stdout then holds {"ok": false, "failures": [...], "error": the message with the checks table}).
    Int8 layers of a checkpoint not fine-tuned for them (`gee-deploy quantize`) are validated against the
    post-training limits ({limits}).
    """
    import json

    from ..export import ExportValidationError
    from ..export.api import report_json
    from ..export.options import export_options

    nir_import = nir_import_options(
        checkpoint,
        nir,
        allow_int8=allow_int8,
        profile=profile,
        data_dir=data_dir,
        storage=storage,
        int8_form=int8_form,
        triton_accelerator=triton_accelerator,
    )
    options = export_options(
        out=out,
        fmt=fmt,
        variant=variant,
        allow_int8=allow_int8,
        opset=opset,
        storage=storage,
        streaming=streaming,
        profile=profile,
        atol=atol,
        samples=samples,
        data_dir=data_dir,
        max_batch_size=max_batch_size,
        fp16=fp16,
        int8_form=int8_form,
        triton_accelerator=triton_accelerator,
    )
    check_writable(out, options.format.out_is_dir)
    refuse_replacing(out, [checkpoint, data_dir, nir.get("images")], replaces_directory=options.format.out_is_dir)
    try:
        if nir_import is not None:
            from ..nir.convert import convert_nir

            report = convert_nir(checkpoint, out, options, nir_import)
        else:
            from ..formats import export_model

            report = export_model(checkpoint, out, options)
    except ExportValidationError as e:
        if as_json:  # a JSON consumer still gets a document, saying what failed; the error line goes to stderr
            click.echo(
                json.dumps(
                    {"ok": False, "out": str(out), "failures": [str(f) for f in e.failures], "error": str(e)}, indent=2
                )
            )
        raise
    click.echo(report_json(report) if as_json else report.summary())


assert export.help is not None  # click takes it from the docstring
export.help = export.help.replace(
    "{limits}",
    f"top-1 agreement >= {_I.min_top1_agreement:.0%}, spikes within "
    f"{_I.max_spike_delta:.1%}, accuracy within {_I.max_accuracy_delta * 100:g} "
    "points",
)
