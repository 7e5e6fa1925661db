"""Where the models an evaluation compares came from, checked against what it is asked to do: the warnings
bench, check and robustness print (docs/evaluations.md, "Provenance warnings").

A graph (ONNX file, TensorRT plan) records the SHA-256 of the checkpoint (or NIR file) it was exported from
(:class:`gee_deploy.spec.ModelSpec`'s ``checkpoint_sha256``); every model records the dataset it was trained
on. Neither mismatch stops the run (comparing another checkpoint's export, or a model on foreign images, can
be the point), but its numbers then say something else than they seem to, so each one is a warning line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from ..data import dataset_info
from ..errors import DataError
from .runtimes import REFERENCES

__all__ = ["provenance_warnings"]


def _same_images(a: str, b: str) -> bool:
    """Whether datasets ``a`` and ``b`` hold the same kind of image: equal names, or the same classes, shape and
    statistics under two names (the embedded fashion-mnist-mini subset and fashion-mnist)."""
    if a == b:
        return True
    try:
        return (
            replace(dataset_info(a), name="") == replace(dataset_info(b), name="")
            and dataset_info(a).classes == dataset_info(b).classes
        )
    except DataError:
        return False


def provenance_warnings(runtimes: Sequence, dataset: str | None) -> list[str]:
    """One line (without the ``warning:`` prefix) per mismatch among opened ``runtimes`` (each with ``name``,
    ``path`` and ``spec``): a graph exported from none of the reference models (checkpoints, NIR files) it is
    compared with, and an explicit ``dataset`` (--dataset; None: each model's own) other than the one a model
    was trained on."""
    lines = []
    references = [r for r in runtimes if r.name in REFERENCES]
    digests = {r.spec.checkpoint_sha256 for r in references}
    for r in runtimes:
        if (
            references
            and r.name not in REFERENCES
            and r.spec.checkpoint_sha256
            and r.spec.checkpoint_sha256 not in digests
        ):
            refs = ", ".join(str(ref.path) for ref in references)
            lines.append(
                f"{r.path} was exported from another checkpoint than {refs} (the checkpoint digest in its "
                "metadata differs): agreement and parity compare two different models"
            )
    if dataset:
        seen = set()
        for r in runtimes:
            own = r.spec.dataset
            if own and not _same_images(own, dataset) and (own, str(r.path)) not in seen:
                seen.add((own, str(r.path)))
                lines.append(
                    f"--dataset {dataset} is not the dataset {r.path} was trained on ({own}): its accuracy "
                    "there says little about the model"
                )
    return lines
