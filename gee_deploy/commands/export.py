from __future__ import annotations

import click

from ..kinds import Storage
from .nir_options import nir_exporter, nir_options


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--out", "-o", required=True, type=click.Path(),
              help="The .onnx file (onnx), repository directory (triton), .plan file (tensorrt) or .nir file (nir).")
@click.option("--variant", default="dense", show_default=True, metavar="dense|factorised|auto|int8",
              help="dense: fold E_in G E_out^T into plain convs; factorised: keep the per-tap rank-g form; "
                   "auto: per layer, the one with fewer MACs (or lower latency with --profile); int8: dense, and "
                   "every layer reading spikes as uint8 spikes x int8 per-channel weights (stem stays float32).")
@click.option("--allow-int8", is_flag=True,
              help="With --variant auto: spike-reading layers of at least 16,384 MACs per call get int8 weights.")
@click.option("--storage", type=click.Choice([s.value for s in Storage]), default=None,
              help="What the file holds. genetic (default for a genetic checkpoint's onnx/triton export): E once per "
                   "population, G, the scales and BatchNorm parameters, and a constant subgraph that computes the "
                   "weights when a session loads the file (same weights, bit for bit, at folded speed); folded: the "
                   "computed weights (the only choice for a dense twin, tensorrt and nir).")
@click.option("--format", "fmt", default="onnx", show_default=True, metavar="onnx|triton|tensorrt|nir",
              help="What to write. nir: the folded dense network as a NIR graph, validated by an independent "
                   "NIR executor (see docs/export.md).")
@click.option("--opset", type=int, default=None, help="ONNX opset (default 18).")
@click.option("--streaming", is_flag=True,
              help="One timestep per call, membrane potentials as graph inputs/outputs.")
@click.option("--atol", type=click.FloatRange(min=0), default=None,
              help="Max abs logit difference for a validation sample to count as matching (fp32 limits; a "
                   "post-training int8 export does not gate on matching samples).")
@click.option("--samples", type=click.IntRange(min=1), default=None,
              help="Test images to validate on (default 256; at most the test split's size).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="Where the checkpoint's dataset lives (default: its standard place).")
@click.option("--profile", is_flag=True, help="With --variant auto: choose per layer by measured latency.")
@click.option("--max-batch-size", type=int, default=64, show_default=True,
              help="Triton max_batch_size / TensorRT optimisation profile maximum.")
@click.option("--fp16", is_flag=True, help="TensorRT: build an FP16 plan.")
@click.option("--json", "as_json", is_flag=True, help="Print the export report as JSON.")
@nir_options
def export(checkpoint, out, variant, allow_int8, storage, fmt, opset, streaming, atol, samples, data_dir, profile,
           max_batch_size, fp16, as_json, **nir):
    """Export CHECKPOINT to ONNX (T timesteps unrolled, BatchNorm folded), a Triton repository, a TensorRT
    plan or a NIR graph, and validate it against the PyTorch model on test images of the checkpoint's dataset.
    CHECKPOINT may also be a .nir file from any framework (docs/nir.md): unrolled over --timesteps and validated
    against the spec-only NIR executor.

    Nothing is written unless validation passes; failures are listed together and exit with status 1 (with
    --json, stdout then holds {"ok": false, "failures": [...], "error": the message with the checks table}).
    Int8 layers of a checkpoint not fine-tuned for them (`gee-deploy quantize`) are validated against the
    post-training limits (top-1 agreement >= 95%, spikes within 0.5%, accuracy within 0.3 points).
    """
    import json

    from ..export import ExportValidationError, export_model
    from ..export.api import report_json

    export_model = nir_exporter(checkpoint, nir, streaming=streaming, allow_int8=allow_int8, profile=profile,
                                data_dir=data_dir, storage=storage) or export_model
    try:
        report = export_model(checkpoint, out, variant=variant, fmt=fmt, opset=opset, streaming=streaming,
                              atol=atol, samples=samples, data_dir=data_dir, profile=profile,
                              max_batch_size=max_batch_size, fp16=fp16, allow_int8=allow_int8, storage=storage)
    except ExportValidationError as e:
        if as_json:  # a JSON consumer still gets a document, saying what failed; the error line goes to stderr
            click.echo(json.dumps({"ok": False, "out": str(out), "failures": [str(f) for f in e.failures],
                                   "error": str(e)}, indent=2))
        raise
    click.echo(report_json(report) if as_json else report.summary())
