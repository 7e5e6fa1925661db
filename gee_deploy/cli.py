"""``gee-deploy``: a thin click group. Each command lives in ``gee_deploy/commands/<name>.py``, is imported
only when invoked (so ``--help`` is instant), parses its options and calls one library function.

Errors and exit codes (docs/design.md): a usage error or an unusable input is one line ``error: ...`` on
stderr and exit 2, raised while the options are parsed or before any work; a check that ran and failed exits
1 with its table; an interrupt exits 130. The group maps every error in one place (:meth:`LazyGroup.main`),
so ``main()``, the console script and click's ``CliRunner`` behave alike.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

import click

from .errors import GeeError

COMMANDS = {
    "models": "List architectures with dense / genetic parameter counts.",
    "recipes": "List the shipped recipes, or print one to copy and edit.",
    "train": "Evolve (optional) and train a recipe into a run directory.",
    "quantize": "Int8 fine-tune of a checkpoint (weights int8 per channel, spikes exact in the int8 export).",
    "ablate": "Table IV ablation: Random / Baseline / +r1 / +r2 / STE over seeds.",
    "export": "Export a checkpoint (or a NIR file) to ONNX (dense / factorised / auto / int8), Triton, TensorRT or NIR.",
    "bench": "Benchmark runtimes: latency, accuracy, parity, spikes and energy.",
    "check": "CI gate: parity and latency ratio of an ONNX export against its checkpoint.",
    "serve": "Serve an ONNX model over the Open Inference Protocol (KServe v2 REST and gRPC).",
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

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """click's ``main`` with our error rule. ``standalone_mode=False`` keeps click's contract: exceptions
        reach the caller (a library or a test that inspects them)."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except GeeError as e:
            _fail(str(e), e.exit_code)
        except click.exceptions.NoArgsIsHelpError as e:  # a bare `gee-deploy` (or group): the help, as click shows it
            click.echo(e.ctx.get_help())
            sys.exit(2)
        except click.UsageError as e:  # before a command body ran: wrong option, missing argument, bad choice
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            _fail(_sentence(e.format_message()) + hint, 2)
        except click.ClickException as e:
            _fail(_sentence(e.format_message()), e.exit_code)
        except (click.exceptions.Abort, KeyboardInterrupt):
            click.echo("interrupted", err=True)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


def _sentence(message: str) -> str:
    """A message as one line (click's can hold newlines)."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def _fail(message: str, code: int):
    """Print ``error: message`` (one line for exit 2; a failed check's table keeps its lines) and exit."""
    click.echo(f"error: {_sentence(message) if code == 2 else message}", err=True)
    sys.exit(code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gee-deploy")
def cli() -> None:
    """Genetically encoded spiking neural networks: evolve, train, export, benchmark, serve.

    Typical flow: gee-deploy train demo --out runs/demo; gee-deploy export
    runs/demo/best.pt --out runs/demo/model.onnx; gee-deploy bench runs/demo/best.pt
    runs/demo/model.onnx --out runs/demo/bench.
    """


def main(argv: list[str] | None = None) -> None:
    """The console script: :meth:`LazyGroup.main` does the error mapping."""
    cli.main(args=argv, prog_name="gee-deploy")


if __name__ == "__main__":
    main()
