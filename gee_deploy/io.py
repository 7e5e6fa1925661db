"""Atomic file writes: a temp file in the target's folder, then os.replace (no half-written files); the version
tags persisted formats carry (:func:`format_version`)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_path",
    "publish_mode",
    "write_json",
    "write_jsonl",
    "append_jsonl",
    "read_jsonl",
    "write_report_files",
    "format_version",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: str | os.PathLike) -> None:
    """Give a file (or directory) made by ``tempfile`` (mode 0600 / 0700) the mode a plain ``open`` would:
    0666 / 0777 less the umask, so a serving container running as another user can read the artefact."""
    full = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, full & ~_umask())


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yields a temp path beside ``target``; renames it onto ``target`` only if the block succeeds.

    The result gets the usual permissions (0666 less the umask), not ``mkstemp``'s private 0600.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    except OSError as e:
        from .errors import GeeError

        raise GeeError(f"cannot write {target}: {e.strerror or e}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        publish_mode(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(target: str | os.PathLike, obj) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_jsonl(target: str | os.PathLike, rows) -> None:
    """Replace ``target`` with one JSON object per line, atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))


def append_jsonl(target: str | os.PathLike, obj) -> None:
    """Append one JSON object as a line (a crash can leave at most a torn last line, which readers skip)."""
    with open(target, "a") as fh:
        fh.write(json.dumps(obj) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows: list[dict] = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn last line of a killed run
    return rows


def write_report_files(out: str | os.PathLike, stem: str, data, markdown: str, figure) -> list[Path]:
    """Write ``out/<stem>.json`` (``data``), ``<stem>.md`` and ``<stem>.png`` (a matplotlib figure, closed
    afterwards), each atomically; returns the three paths."""
    import matplotlib.pyplot as plt

    out = Path(out)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    try:
        write_json(paths[0], data)
        with atomic_path(paths[1]) as tmp:
            tmp.write_text(markdown)
        with atomic_path(paths[2], suffix=".png") as tmp:
            figure.savefig(tmp, format="png", dpi=110)
    finally:
        plt.close(figure)
    return paths


def format_version(tag: object, prefix: str = "") -> int | None:
    """N of a persisted format's version tag ``f"{prefix}N"`` (``"gee-deploy/1"`` with prefix ``"gee-deploy/"``
    is 1); None when ``tag`` is no such tag (another kind of file). Each format's one reader compares N with the
    version it writes (docs/design.md, "Formats and versions")."""
    if isinstance(tag, str) and tag.startswith(prefix) and tag[len(prefix) :].isdigit():
        return int(tag[len(prefix) :])
    return None
