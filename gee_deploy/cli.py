"""``gee-deploy``: a thin click group. Each command lives in ``gee_deploy/commands/<name>.py``, is imported
only when invoked (so ``--help`` is instant), parses its options and calls one library function.
Our own errors (:class:`gee_deploy.errors.GeeError`) become one line on stderr and a non-zero exit.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys

import click

COMMANDS = {
    "models": "List architectures with dense / genetic parameter counts.",
    "recipes": "List the shipped recipes, or print one to copy and edit.",
    "train": "Evolve (optional) and train a recipe into a run directory.",
    "quantize": "Int8 fine-tune of a checkpoint (weights int8 per channel, spikes exact in the int8 export).",
    "ablate": "Table IV ablation: Random / Baseline / +r1 / +r2 / STE over seeds.",
    "export": "Export a checkpoint to ONNX (dense / factorised / auto), Triton or TensorRT.",
    "bench": "Benchmark runtimes: latency, accuracy, parity, spikes and energy.",
    "check": "CI gate: parity and latency ratio of an ONNX export against its checkpoint.",
    "serve": "Serve an ONNX model over the Open Inference Protocol (KServe v2 REST).",
    "robustness": "Fig. 2: accuracy under Gaussian noise of a fraction of each image's L2 norm.",
    "sweep": "Fig. 3: train each gene count g and the dense twin; accuracy, parameters, energy.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return [name for name in COMMANDS if self._module(name) is not None]

    @staticmethod
    def _module(name: str) -> str | None:
        path = f"gee_deploy.commands.{name}"
        return path if importlib.util.find_spec(path) is not None else None

    def get_command(self, ctx, name):
        if name not in COMMANDS or self._module(name) is None:
            return None
        return getattr(importlib.import_module(f"gee_deploy.commands.{name}"), name)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gee-deploy")
def cli() -> None:
    """Genetically encoded spiking neural networks: evolve, train, export, benchmark, serve.

    Typical flow: gee-deploy train demo --out runs/demo; gee-deploy export
    runs/demo/best.pt --out runs/demo/model.onnx; gee-deploy bench runs/demo/best.pt
    runs/demo/model.onnx --out runs/demo/bench.
    """


def main(argv: list[str] | None = None) -> None:
    from .errors import GeeError

    try:
        cli.main(args=argv, standalone_mode=False)
    except GeeError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
