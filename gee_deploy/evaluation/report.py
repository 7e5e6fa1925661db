"""The bench report: report.json (everything), report.md (tables), PNG plots, and the printed summary."""
from __future__ import annotations

import os
from pathlib import Path

from ..io import atomic_path, write_json

__all__ = ["summary_table", "spikes_table", "write_report"]


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def summary_table(report: dict) -> str:
    """One row per runtime and batch size: every latency, accuracy, parity, spike and energy number."""
    stats = {r["runtime"]: r for r in report["runtimes"]}
    w = max(9, *(len(name) for name in stats))
    ref = report["runtimes"][0]["kind"] if report["runtimes"] else "torch"  # the reference runs first
    speedup = f"x {ref if ref in ('torch', 'nir') else 'ref'}"
    head = (f"{'runtime':<{w}} {'batch':>5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'samples/s':>10} "
            f"{speedup:>7} {'acc':>7} {'top1 agr':>8} {'max dlogit':>10} {'spikes/smp':>10} {'energy uJ':>9}")
    lines = [head, "-" * len(head)]
    for lat in report["latency"]:
        r = stats[lat["runtime"]]
        par = r.get("parity", {})
        lines.append(
            f"{lat['runtime']:<{w}} {lat['batch']:>5} {lat['p50_ms']:>8.3f} {lat['p90_ms']:>8.3f} {lat['p99_ms']:>8.3f} "
            f"{lat['samples_per_s']:>10.1f} {_fmt(lat.get('speedup_vs_torch'), '7.2f'):>7} {r['accuracy']:>7.2%} "
            f"{_fmt(par.get('top1_agreement'), '.2%'):>8} {_fmt(par.get('max_logit_diff'), '.2e'):>10} "
            f"{r['spikes_per_sample']:>10.1f} {r['energy']['energy_pj'] / 1e6:>9.4f}")
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

    out = ["## Spikes and energy per image, genetic vs dense twin (Table III)", "",
           "| runtime | file | model | genes | accuracy | spikes / image | of dense twin | energy / image (uJ) | "
           "of dense twin |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d = twin(r)
        out.append(f"| {r['runtime']} | {r['path']} | {r['model_name']} | {r['genes'] or 'dense'} | {r['accuracy']:.2%} | "
                   f"{r['spikes_per_sample']:,.1f} | {share(r['spikes_per_sample'], d and d['spikes_per_sample'])} | "
                   f"{r['energy']['energy_pj'] / 1e6:.4f} | "
                   f"{share(r['energy']['energy_pj'], d and d['energy']['energy_pj'])} |")
    if all(twin(r) is None for r in rows):
        out += ["", "No dense twin in this run: bench the dense twin trained with the same recipe "
                "(`gee-deploy train RECIPE --set model.genes=0`) beside the genetic model to fill the shares."]
    return out + [""]


def _engine(r: dict) -> list[str]:
    """The line naming what ran a graph: runtime, execution providers, float precision; none for a reference."""
    if "providers" not in r:
        return []
    return [f"Runtime {r['kind']}: {', '.join(r['providers'])} (onnxruntime {r.get('onnxruntime', '?')}), float "
            f"ops in {r.get('precision', 'f32')}.", ""]


def _markdown(report: dict) -> str:
    out = [f"# gee-deploy bench: {report['dataset']} ({report['samples']} test samples, T = {report['timesteps']})",
           "", f"Machine: {report['machine']['processor']}, {report['machine']['cpu_count']} CPUs, "
           f"threads per runtime: {report['machine']['threads'] or 'runtime default'}, load average when the run "
           f"started: {report['machine'].get('load_average', float('nan')):.2f}.", "",
           "## Latency, accuracy, parity, spikes, energy", "", "```", summary_table(report), "```", "",
           *spikes_table(report)]
    for r in report["runtimes"]:
        out += [f"## {r['runtime']}: {r['path']}", "", *_engine(r),
                f"Accuracy {r['accuracy']:.2%}; {r['spikes_per_sample']:.1f} spikes per sample; "
                f"eq. 17 energy {r['energy']['energy_pj'] / 1e6:.4f} uJ per sample "
                f"({r['energy']['analog_macs']:,} analog MACs, {r['energy']['sops']:,.0f} SOPs).", ""]
        if "parity" in r:
            p = r["parity"]
            out += [f"Parity with PyTorch eager: top-1 agreement {p['top1_agreement']:.4%}, max logit diff "
                    f"{p['max_logit_diff']:.3e}, accuracy delta {p['accuracy_delta'] * 100:+.3f} points, "
                    f"spike-count delta {p['spike_count_delta']:.4%}.", ""]
        out += ["| spiking layer | neurons | spikes / sample | firing rate |", "|---|---:|---:|---:|"]
        for name, fr in r["firing_rates"].items():
            out.append(f"| {name} | {r['neurons_per_layer'][name]:,} | {r['spikes_per_layer'][name]:.1f} | {fr:.4f} |")
        out += ["", "| weight layer | kind | precision | op | MACs / call | calls | reads spikes of | firing rate | "
                "SOPs | analog MACs | energy pJ |", "|---|---|---|---|---:|---:|---|---:|---:|---:|---:|"]
        for e in r["energy"]["per_layer"]:
            out.append(f"| {e['name']} | {e['kind']} | {e.get('precision', 'fp32')} | {e['op']} | {e['macs']:,} | "
                       f"{e['calls']} | {e['spiking_input_layer'] or '-'} | {_fmt(e['firing_rate'], '.4f')} | "
                       f"{e['sops']:,.0f} | {e['analog_macs']:,} | {e['energy_pj']:,.0f} |")
        constants = r["energy"].get("constants", {})
        out += ["", "Energy constants used (pJ): " + "; ".join(
            f"{p} {c['mac_pj']:g} per MAC, {c['ac_pj']:g} per SOP" for p, c in constants.items() if p != "source")
            + (f" ({constants['source']})." if "source" in constants else "."), ""]
        if "op_profile" in r:
            prof = r["op_profile"]
            out += [f"onnxruntime profiler, batch {prof['batch']}: kernel time per operator type (per call)", "",
                    "| op | ms per call | share | nodes |", "|---|---:|---:|---:|"]
            out += [f"| {o['op']} | {o['ms_per_call']:.3f} | {o['share']:.1%} | {o['nodes']} |" for o in prof["ops"]]
            out.append("")
    out += ["Energy: eq. 17 of the paper, E = 4.6 pJ x analog MACs (the stem, computed once; in a factorised "
            "layer also the ops after the one that reads spikes) + 0.9 pJ x sum_l fr_l x T x MACs_l over the ops "
            "that read spikes, fr_l the firing rate of the LIF feeding layer l; int8 layers use the 8-bit constants "
            "listed under each runtime.", "",
            "Plots: latency.png, firing_rate.png, energy.png.", ""]
    return "\n".join(out)


def _save(fig, target: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(target, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _plots(report: dict, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [out / "latency.png", out / "firing_rate.png", out / "energy.png"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for rt in dict.fromkeys(lat["runtime"] for lat in report["latency"]):
        rows = [lat for lat in report["latency"] if lat["runtime"] == rt]
        ax.errorbar([r["batch"] for r in rows], [r["p50_ms"] for r in rows],
                    yerr=[[0] * len(rows), [r["p99_ms"] - r["p50_ms"] for r in rows]], marker="o", capsize=3, label=rt)
    ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="latency per call, ms (p50, bar to p99)",
           title="Latency per runtime and batch")
    ax.legend()
    _save(fig, paths[0])

    fig, ax = plt.subplots(figsize=(6, 4))
    width = 0.8 / max(1, len(report["runtimes"]))
    for i, r in enumerate(report["runtimes"]):
        names = list(r["firing_rates"])
        ax.bar([j + i * width for j in range(len(names))], list(r["firing_rates"].values()), width, label=r["runtime"])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30, ha="right")
    ax.set(ylabel="firing rate (spikes / neuron / step)", title="Firing rate per spiking layer")
    ax.legend()
    _save(fig, paths[1])

    fig, ax = plt.subplots(figsize=(6, 4))
    layers = report["runtimes"][-1]["energy"]["per_layer"]
    ax.bar([e["name"] for e in layers], [e["energy_pj"] / 1e3 for e in layers],
           color=["tab:red" if e["op"] == "MAC" else "tab:purple" if e["analog_macs"] else "tab:blue" for e in layers])
    ax.set(ylabel="energy per sample, nJ", title=f"Eq. 17 energy per layer ({report['runtimes'][-1]['runtime']}; "
           "red MAC, blue AC, purple both)")
    ax.tick_params(axis="x", rotation=30)
    _save(fig, paths[2])
    return paths


def write_report(report: dict, out: str | os.PathLike) -> list[Path]:
    """Write report.json, report.md and the plots into ``out``; returns the paths written."""
    out = Path(out)
    write_json(out / "report.json", report)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(_markdown(report))
    return [out / "report.json", out / "report.md", *_plots(report, out)]
