"""The report plots read as intended: ticks at the measured batch sizes, legends beside (not over) the bars,
every runtime's energy, labels that do not run into each other, titles inside the figure."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402

from gee_deploy.evaluation.report import energy_figure, firing_figure, latency_figure  # noqa: E402

RUNTIMES = ["torch", "ort-cpu", "ort-cpu:int8"]
LAYERS = [("stem", "MAC", 0), ("lif1.conv", "AC", 0), ("lif2.conv", "AC", 5), ("fc", "AC", 0)]


def _report() -> dict:
    latency = [{"runtime": rt, "batch": b, "p50_ms": 1.0 + b * (i + 1) / 10, "p99_ms": 2.0 + b * (i + 1) / 10}
               for i, rt in enumerate(RUNTIMES) for b in (1, 16, 64)]
    runtimes = [{"runtime": rt,
                 "firing_rates": {"lif1": 0.30 + i / 50, "lif2": 0.28, "lif3": 0.31 + i / 100},
                 "energy": {"per_layer": [{"name": n, "op": op, "analog_macs": a, "energy_pj": 1e5 * (j + 1) * (i + 1)}
                                          for j, (n, op, a) in enumerate(LAYERS)]}}
                for i, rt in enumerate(RUNTIMES)]
    return {"latency": latency, "runtimes": runtimes}


def _render(fig):
    fig.canvas.draw()
    return fig.canvas.get_renderer()


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_latency_axis_is_ticked_at_the_batch_sizes():
    fig = latency_figure(_report())
    _render(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "16", "64"]
    assert not ax.xaxis.get_minorticklocs().size


@pytest.mark.parametrize("figure", [firing_figure, energy_figure])
def test_the_legend_covers_no_bar_and_every_runtime_has_bars(figure):
    fig = figure(_report())
    renderer = _render(fig)
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches]
    assert not any(_overlaps(legend, bar) for bar in bars)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == RUNTIMES
    assert len(ax.containers) == len(RUNTIMES)  # energy: every runtime, not only the last


def test_energy_labels_say_what_each_layer_counts_and_the_title_fits():
    fig = energy_figure(_report())
    renderer = _render(fig)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["stem (MAC)", "lif1.conv (AC)", "lif2.conv (MAC+AC)",
                                                           "fc (AC)"]
    title = ax.title.get_window_extent(renderer)
    assert title.x0 >= 0 and title.x1 <= fig.bbox.width


def test_ablation_labels_do_not_run_into_each_other(tmp_path):
    from gee_deploy.training.ablation import DEFAULT_VARIANTS, VARIANTS, _plot

    import matplotlib.pyplot as plt

    rows = [{"label": VARIANTS[v][0], "mean": 0.8, "std": 0.01, "test_acc": [0.79, 0.8, 0.81]}
            for v in DEFAULT_VARIANTS]
    summary = {"variants": rows, "model": "smallnet", "genes": 32, "dataset": "fashion-mnist-mini", "seeds": 3}
    captured = {}
    real_close = plt.close
    plt.close = lambda fig=None: captured.setdefault("fig", fig)  # keep the figure to measure it
    try:
        _plot(summary, tmp_path / "ablation.png")
    finally:
        plt.close = real_close
    fig = captured["fig"]
    renderer = _render(fig)
    boxes = [t.get_window_extent(renderer) for t in fig.axes[0].get_xticklabels()]
    assert len(boxes) == len(rows)
    assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:]))
    assert (tmp_path / "ablation.png").stat().st_size > 0
    real_close(fig)
