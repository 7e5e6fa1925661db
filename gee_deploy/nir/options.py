"""The options of a NIR import (`gee-deploy export MODEL.nir`: a NIR graph from any framework), as one object.

The CLI's decorators (``gee_deploy.commands.nir_options``) parse and range-check them and build a
:class:`NIRImportOptions`; :func:`gee_deploy.nir.convert.convert_nir` resolves the defaults a file states
(T, dt) and checks the resolved values (:meth:`gee_deploy.nir.importer.NIRImport.check`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["NIRImportOptions"]


@dataclass(frozen=True, kw_only=True)
class NIRImportOptions:
    """How a NIR graph is read (docs/nir.md).

    Attributes:
        timesteps: T, the steps unrolled in the graph; None: the T a file exported by gee-deploy records.
        input_mode: "static" (one input repeated over the T steps: direct encoding) or "sequence"
            ([N, T, ...] per-step inputs: event data).
        dt: the Euler step in seconds; None: the file's metadata (``nir.dt`` or ``dt``).
        threshold_rule: "gt" fires on v > v_th as NIR defines it (snntorch); "ge" on v >= v_th (SpikingJelly).
        images: a .npy of validation inputs in the graph's input layout; None: the test images of the dataset a
            file exported by gee-deploy names, when they are here, else random inputs of the declared shape.
    """

    timesteps: int | None = None
    input_mode: str = "static"
    dt: float | None = None
    threshold_rule: str = "gt"
    images: Path | None = None
