"""The README's Python example runs as written, on a freshly trained checkpoint, and the README stays short."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(encoding="utf-8"), re.S | re.M)


def test_readme_python_example_runs(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """The "From Python" block, executed verbatim from a directory whose runs/demo/best.pt is a trained checkpoint."""
    blocks = [b for b in _python_blocks() if "load_model(" in b]
    assert len(blocks) == 1, "the README should have exactly one Python example that loads a checkpoint"
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    shutil.copy(tiny_checkpoint, tmp_path / "runs" / "demo" / "best.pt")
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "readme_example"}
    exec(compile(blocks[0], str(README), "exec"), scope)
    out = capsys.readouterr().out
    assert "smallnet" in out  # list_models() printed
    # the objects the example names are what its comments say they are
    from gee_deploy.genetic import GeneticConv2d

    assert isinstance(scope["conv"], GeneticConv2d)
    conv = scope["conv"]
    cout, cin, k, _ = conv.weight.shape
    assert conv.e_in.shape == (cin, k * k, conv.genes) and conv.e_out.shape == (cout, k * k, conv.genes)
    assert scope["logits"].shape == (len(scope["labels"]), scope["model"].num_classes)
    assert scope["twin"].genes is None


def test_readme_is_short_and_lists_every_command():
    from gee_deploy.cli import COMMANDS

    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220
    for name in COMMANDS:
        assert re.search(rf"^gee-deploy {name}\b", text, re.M), f"the README's command list lacks {name}"
