"""The bench report: report.json (everything), report.md (tables), PNG plots, and the printed summary."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..io import atomic_path, write_json

__all__ = [
    "summary_table",
    "spikes_table",
    "neurobench_table",
    "write_report",
    "write_neurobench",
    "latency_figure",
    "firing_figure",
    "energy_figure",
]


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def summary_table(report: dict) -> str:
    """One row per runtime and batch size: every latency, accuracy, parity, spike and energy number."""
    stats = {r["runtime"]: r for r in report["runtimes"]}
    w = max(9, *(len(name) for name in stats))
    ref = report["runtimes"][0]["kind"] if report["runtimes"] else "torch"  # the reference runs first
    speedup = f"x {ref if ref in ('torch', 'nir') else 'ref'}"
    head = (
        f"{'runtime':<{w}} {'batch':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'samples/s':>10} "
        f"{speedup:>7} {'acc':>7} {'top1 agr':>8} {'max dlogit':>10} {'spikes/smp':>10} {'energy uJ':>9}"
    )
    lines = [head, "-" * len(head)]
    for lat in report["latency"]:
        r = stats[lat["runtime"]]
        par = r.get("parity", {})
        lines.append(
            f"{lat['runtime']:<{w}} {lat['batch']:>5} {lat['p50_ms']:>8.3f} {lat['p90_ms']:>8.3f} {lat['p99_ms']:>8.3f} "
            f"{lat['samples_per_s']:>10.1f} {_fmt(lat.get('speedup_vs_torch'), '7.2f'):>7} {r['accuracy']:>7.2%} "
            f"{_fmt(par.get('top1_agreement'), '.2%'):>8} {_fmt(par.get('max_logit_diff'), '.2e'):>10} "
            f"{r['spikes_per_sample']:>10.1f} {r['energy']['energy_pj'] / 1e6:>9.4f}"
        )
    return "\n".join(lines)


def spikes_table(report: dict) -> list[str]:
    """Table III of the paper: accuracy, spikes and eq. 17 energy per image of each genetic model beside its
    dense twin (the same architecture at genes = 0, on the same runtime kind; bench it in the same run).

    Returns Markdown lines; empty when no model says its gene count (files exported before the spec had it).
    """
    rows = [r for r in report["runtimes"] if r.get("genes") is not None]
    if not rows:
        return []

    def twin(r: dict) -> dict | None:
        dense = [d for d in rows if d["model_name"] == r["model_name"] and d["genes"] == 0]
        return next((d for d in dense if d["kind"] == r["kind"]), dense[0] if dense else None)

    def share(v: float, d: float | None) -> str:
        return "-" if not d else f"{v / d:.1%}"

    out = [
        "## Spikes and energy per image, genetic vs dense twin (Table III)",
        "",
        "| runtime | file | model | genes | accuracy | spikes / image | of dense twin | energy / image (uJ) | "
        "of dense twin |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d = twin(r)
        out.append(
            f"| {r['runtime']} | {r['path']} | {r['model_name']} | {r['genes'] or 'dense'} | {r['accuracy']:.2%} | "
            f"{r['spikes_per_sample']:,.1f} | {share(r['spikes_per_sample'], d['spikes_per_sample'] if d else None)} | "
            f"{r['energy']['energy_pj'] / 1e6:.4f} | "
            f"{share(r['energy']['energy_pj'], d['energy']['energy_pj'] if d else None)} |"
        )
    if all(twin(r) is None for r in rows):
        out += [
            "",
            "No dense twin in this run: bench the dense twin trained with the same recipe "
            "(`gee-deploy train RECIPE --set model.genes=0`) beside the genetic model to fill the shares.",
        ]
    return out + [""]


def neurobench_table(report: dict) -> list[str]:
    """NeuroBench's metrics per runtime (:mod:`gee_deploy.evaluation.neurobench`), with eq. 17's SOPs beside
    ``Effective_ACs`` and, per runtime, the split by weight layer; Markdown lines (empty for a report without them)."""
    rows = [r for r in report["runtimes"] if "neurobench" in r]
    if not rows:
        return []
    out = [
        f"## NeuroBench {rows[0]['neurobench']['version']} metrics (per sample; docs/neurobench.md)",
        "",
        "| runtime | Footprint B | file B | ParameterCount | ConnectionSparsity | ActivationSparsity | Effective_ACs | "
        "eq. 17 SOPs | Effective_MACs | Dense | MembraneUpdates | counted from |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        nb, ops = r["neurobench"], r["neurobench"].get("SynapticOperations") or {}
        source = (
            nb["counted_from"]
            + (
                f" (layers {', '.join(nb['borrowed_layers'])} per spike of {nb['borrowed_from']})"
                if "borrowed_from" in nb
                else ""
            )
            + (f"; MembraneUpdates of {nb['membrane_updates_from']}" if "membrane_updates_from" in nb else "")
        )
        out.append(
            f"| {r['runtime']} | {_fmt(nb['Footprint'], ',')} | {nb['file_bytes']:,} | "
            f"{_fmt(nb['ParameterCount'], ',')} | {_fmt(nb.get('ConnectionSparsity'), '.4f')} | "
            f"{nb['ActivationSparsity']:.6f} | {_fmt(ops.get('Effective_ACs'), ',.1f')} | {nb['eq17_sops']:,.1f} | "
            f"{_fmt(ops.get('Effective_MACs'), ',.1f')} | {_fmt(ops.get('Dense'), ',.1f')} | "
            f"{_fmt(nb.get('MembraneUpdates'), ',.1f')} | {source} |"
        )
    for r in (r for r in rows if r["neurobench"].get("per_layer")):
        per_layer, sops = r["neurobench"]["per_layer"], {e["name"]: e for e in r["energy"]["per_layer"]}
        out += [
            "",
            f"{r['runtime']}, per weight layer: NeuroBench's ops beside eq. 17's",
            "",
            "| layer | Effective_ACs | Effective_MACs | Dense | eq. 17 SOPs | eq. 17 analog MACs |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        out += [
            f"| {name} | {c['AC']:,.1f} | {c['MAC']:,.1f} | {c['Dense']:,.1f} | "
            f"{sops[name]['sops'] if name in sops else 0:,.1f} | {sops[name]['analog_macs'] if name in sops else 0:,} |"
            for name, c in per_layer.items()
        ]
    return out + [
        "",
        "Effective_ACs count each spike times the synapses it reaches (fewer at a padded border); eq. 17's "
        "SOPs are firing rate x T x MACs, MACs counting padding taps: docs/neurobench.md says where they "
        "part.",
        "",
    ]


def write_neurobench(report: dict, out: str | os.PathLike) -> list[Path]:
    """OUT/neurobench/<runtime>.json per runtime: the layout ``Benchmark.save_benchmark_results`` writes
    (``json.dump(results, indent=4)``); returns the paths written."""
    from .neurobench import neurobench_results

    paths = []
    for r in report["runtimes"]:
        path = Path(out) / "neurobench" / f"{r['runtime'].replace('/', '_').replace(':', '_')}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(neurobench_results(r["neurobench"]), indent=4))
        paths.append(path)
    return paths


def _engine(r: dict) -> list[str]:
    """The line naming what ran a graph: runtime, execution providers, float precision; none for a reference."""
    if "providers" not in r:
        return []
    return [
        f"Runtime {r['kind']}: {', '.join(r['providers'])} (onnxruntime {r.get('onnxruntime', '?')}), float "
        f"ops in {r.get('precision', 'f32')}.",
        "",
    ]


def _markdown(report: dict) -> str:
    out = [
        f"# gee-deploy bench: {report['dataset']} ({report['samples']} test samples, T = {report['timesteps']})",
        "",
        f"Machine: {report['machine']['processor']}, {report['machine']['cpu_count']} CPUs, "
        f"threads per runtime: {report['machine']['threads'] or 'runtime default'}, load average when the run "
        f"started: {report['machine'].get('load_average', float('nan')):.2f}, CPUs other processes kept busy "
        f"just before it: {report['machine'].get('busy_cpus', float('nan')):.2f}.",
        "",
        "## Latency, accuracy, parity, spikes, energy",
        "",
        "```",
        summary_table(report),
        "```",
        "",
        *spikes_table(report),
        *neurobench_table(report),
    ]
    for r in report["runtimes"]:
        out += [
            f"## {r['runtime']}: {r['path']}",
            "",
            *_engine(r),
            f"Accuracy {r['accuracy']:.2%}; {r['spikes_per_sample']:.1f} spikes per sample; "
            f"eq. 17 energy {r['energy']['energy_pj'] / 1e6:.4f} uJ per sample "
            f"({r['energy']['analog_macs']:,} analog MACs, {r['energy']['sops']:,.0f} SOPs).",
            "",
        ]
        if "parity" in r:
            p = r["parity"]
            out += [
                f"Parity with PyTorch eager: top-1 agreement {p['top1_agreement']:.4%}, max logit diff "
                f"{p['max_logit_diff']:.3e}, accuracy delta {p['accuracy_delta'] * 100:+.3f} points, "
                f"spike-count delta {p['spike_count_delta']:.4%}.",
                "",
            ]
        out += ["| spiking layer | neurons | spikes / sample | firing rate |", "|---|---:|---:|---:|"]
        for name, fr in r["firing_rates"].items():
            out.append(f"| {name} | {r['neurons_per_layer'][name]:,} | {r['spikes_per_layer'][name]:.1f} | {fr:.4f} |")
        out += [
            "",
            "| weight layer | kind | precision | op | MACs / call | calls | reads spikes of | firing rate | "
            "SOPs | analog MACs | energy pJ |",
            "|---|---|---|---|---:|---:|---|---:|---:|---:|---:|",
        ]
        for e in r["energy"]["per_layer"]:
            out.append(
                f"| {e['name']} | {e['kind']} | {e.get('precision', 'fp32')} | {e['op']} | {e['macs']:,} | "
                f"{e['calls']} | {e['spiking_input_layer'] or '-'} | {_fmt(e['firing_rate'], '.4f')} | "
                f"{e['sops']:,.0f} | {e['analog_macs']:,} | {e['energy_pj']:,.0f} |"
            )
        constants = r["energy"].get("constants", {})
        out += [
            "",
            "Energy constants used (pJ): "
            + "; ".join(
                f"{p} {c['mac_pj']:g} per MAC, {c['ac_pj']:g} per SOP" for p, c in constants.items() if p != "source"
            )
            + (f" ({constants['source']})." if "source" in constants else "."),
            "",
        ]
        if "op_profile" in r:
            prof = r["op_profile"]
            out += [
                f"onnxruntime profiler, batch {prof['batch']}: kernel time per operator type (per call)",
                "",
                "| op | ms per call | share | nodes |",
                "|---|---:|---:|---:|",
            ]
            out += [f"| {o['op']} | {o['ms_per_call']:.3f} | {o['share']:.1%} | {o['nodes']} |" for o in prof["ops"]]
            out.append("")
    out += [
        "Energy: eq. 17 of the paper, E = 4.6 pJ x analog MACs (the stem, computed once; in a factorised "
        "layer also the ops after the one that reads spikes) + 0.9 pJ x sum_l fr_l x T x MACs_l over the ops "
        "that read spikes, fr_l the firing rate of the LIF feeding layer l; int8 layers use the 8-bit constants "
        "listed under each runtime.",
        "",
        "Plots: latency.png, firing_rate.png, energy.png.",
        "",
    ]
    return "\n".join(out)


def _save(fig, target: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def latency_figure(report: dict):
    """p50 latency per call against batch size, one line per runtime (bar to p99); log axes ticked at the
    batch sizes measured."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fig, ax = plt.subplots(figsize=(6, 4))
    for rt in dict.fromkeys(lat["runtime"] for lat in report["latency"]):
        rows = [lat for lat in report["latency"] if lat["runtime"] == rt]
        ax.errorbar(
            [r["batch"] for r in rows],
            [r["p50_ms"] for r in rows],
            yerr=[[0] * len(rows), [r["p99_ms"] - r["p50_ms"] for r in rows]],
            marker="o",
            capsize=3,
            label=rt,
        )
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="batch size",
        ylabel="latency per call, ms (p50, bar to p99)",
        title="Latency per runtime and batch",
    )
    batches = sorted({lat["batch"] for lat in report["latency"]})
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.legend(fontsize=8)
    return fig


def _grouped_bars(ax, groups: list[str], series: list[tuple[str, list[float]]]) -> None:
    """One bar per (group, series), the series side by side within each group, the legend outside the axes
    (to the right) so it covers no bar."""
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series):
        ax.bar([j - 0.4 + (i + 0.5) * width for j in range(len(values))], values, width, label=label)
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def firing_figure(report: dict):
    """Firing rate per spiking layer, one bar per runtime."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    names = list(report["runtimes"][0]["firing_rates"])
    _grouped_bars(
        ax, names, [(r["runtime"], [r["firing_rates"].get(n, 0.0) for n in names]) for r in report["runtimes"]]
    )
    ax.set(ylabel="firing rate (spikes / neuron / step)", title="Firing rate per spiking layer")
    return fig


def energy_figure(report: dict):
    """Eq. 17 energy per layer, one bar per runtime; each layer's label says what its energy counts (MAC:
    analog multiply-accumulates, AC: synaptic operations on spikes, MAC+AC: both)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    kinds: dict[str, str] = {}  # layer name -> kind, in the order the runtimes list them (they may differ)
    for r in report["runtimes"]:
        for e in r["energy"]["per_layer"]:
            kinds.setdefault(e["name"], "MAC" if e["op"] == "MAC" else "MAC+AC" if e["analog_macs"] else "AC")
    series = []
    for r in report["runtimes"]:
        per_name: dict[str, float] = {}
        for e in r["energy"]["per_layer"]:
            per_name[e["name"]] = per_name.get(e["name"], 0.0) + e["energy_pj"] / 1e3
        series.append((r["runtime"], [per_name.get(name, 0.0) for name in kinds]))
    _grouped_bars(ax, [f"{name} ({kind})" for name, kind in kinds.items()], series)
    ax.set(ylabel="energy per sample, nJ", title="Eq. 17 energy per layer")
    return fig


def _plots(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")

    paths = [out / "latency.png", out / "firing_rate.png", out / "energy.png"]
    for figure, path in zip((latency_figure, firing_figure, energy_figure), paths):
        _save(figure(report), path)
    return paths


def write_report(report: dict, out: str | os.PathLike) -> list[Path]:
    """Write report.json, report.md and the plots into ``out``; returns the paths written."""
    out = Path(out)
    write_json(out / "report.json", report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(_markdown(report))
    return [out / "report.json", out / "report.md", *_plots(report, out)]
