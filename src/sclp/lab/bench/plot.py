"""The PNG chart of a run, drawn with matplotlib.

Why apart: matplotlib is an optional dependency (extra ``plot``).  It is imported
only here and only inside the functions below, so everything else in ``sclp``, the
benchmark included, works without it; :func:`matplotlib_missing` lets the CLI
refuse ``--plot`` before a long run instead of failing at its end.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from sclp.lab.bench.tables import by_label

# Chart order and grouping, like the paper's figure: references, the classic tunnels,
# then the segment-oriented ones.
_REFERENCE_COLORS: Final = ("#bbbbbb", "#888888")
_TUNNEL_COLORS: Final = ("#3a6ea5", "#e08a2c")

# How to get matplotlib, for the error that names the fix.
INSTALL_HINT: Final = "pip install matplotlib (in a checkout: pip install -e '.[plot]')"


def matplotlib_missing() -> str | None:
    """None when matplotlib can be imported (it then is), else why not."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        return str(exc) or "matplotlib is not installed"
    return None


def write_plot(report: dict[str, Any], path: Path) -> None:
    """A PNG: TCP and UDP throughput per configuration (references grey and
    hatched), and the two-level pre-reassembly ablation (TCP)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    main = [(label, rows) for label, rows in by_label(report) if "no-level" not in label]
    ablation = [(label, rows) for label, rows in by_label(report) if "no-level" in label]
    sclp_bases = sorted({label.rsplit("/", 1)[0] for label, _ in ablation})
    fig, axes = plt.subplots(
        1,
        2 if sclp_bases else 1,
        figsize=(14 if sclp_bases else 11, 5),
        gridspec_kw={"width_ratios": [3, 1]} if sclp_bases else None,
        squeeze=False,
    )
    ax = axes[0][0]
    width = 0.4
    for t_index, transport in enumerate(("tcp", "udp")):
        for x, (_label, rows) in enumerate(main):
            r = rows.get(transport)
            if r is None:
                continue
            ref = bool(r["reference"])
            color = (_REFERENCE_COLORS if ref else _TUNNEL_COLORS)[t_index]
            pos = x + (t_index - 0.5) * width
            if r["gbps_median"] is None:
                ax.text(pos, 0, "failed", rotation=90, ha="center", va="bottom", fontsize=7)
                continue
            runs = r["gbps_runs"]
            bars = ax.bar(
                pos,
                r["gbps_median"],
                width,
                color=color,
                hatch="//" if ref else None,
                edgecolor="black",
                linewidth=0.5,
                yerr=[[r["gbps_median"] - min(runs)], [max(runs) - r["gbps_median"]]],
                capsize=2,
                label=f"{transport.upper()}{' (reference)' if ref else ''}",
            )
            ax.bar_label(bars, fmt="%.2g", padding=2, fontsize=7)
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles, strict=True))
    ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # room for the legend above the bars
    ax.legend(unique.values(), unique.keys(), fontsize=8, ncols=4, loc="upper left")
    ax.set_xticks(range(len(main)), [label for label, _ in main], rotation=45, ha="right")
    ax.set_ylabel("Gbit/s (median, bars: min–max)")
    ax.set_title("VM-to-VM throughput, iperf3")
    ax.grid(axis="y", alpha=0.3)
    if sclp_bases:
        ax2 = axes[0][1]
        variants = ("both levels", "no-level1", "no-level2")
        rows_of = dict(by_label(report))
        w = 0.8 / len(variants)
        for v_index, variant in enumerate(variants):
            for x, base in enumerate(sclp_bases):
                label = base if variant == "both levels" else f"{base}/{variant}"
                r = rows_of.get(label, {}).get("tcp")
                pos = x + (v_index - 1) * w
                if r is None or r["gbps_median"] is None:
                    note = "not run" if r is None else "failed"
                    ax2.text(pos, 0, note, rotation=90, ha="center", va="bottom", fontsize=7)
                    continue
                bars = ax2.bar(
                    pos,
                    r["gbps_median"],
                    w,
                    color=("#2e7d32", "#9ccc65", "#fbc02d")[v_index],
                    edgecolor="black",
                    linewidth=0.5,
                    label=variant,
                )
                ax2.bar_label(bars, fmt="%.2g", padding=2, fontsize=7)
        handles, labels = ax2.get_legend_handles_labels()
        unique = dict(zip(labels, handles, strict=True))
        ax2.set_ylim(top=ax2.get_ylim()[1] * 1.2)
        ax2.legend(
            unique.values(),
            unique.keys(),
            fontsize=7,
            ncols=3,
            loc="upper left",
            columnspacing=0.8,
            handlelength=1.0,
        )
        ax2.set_xticks(range(len(sclp_bases)), sclp_bases, rotation=45, ha="right")
        ax2.set_ylabel("TCP Gbit/s (median)")
        ax2.set_title("pre-reassembly ablation")
        ax2.grid(axis="y", alpha=0.3)
    machine = report["machine"]
    fig.suptitle(
        f"sclp bench, {machine['cpu_model']} × {machine['nproc']}, "
        f"{report['options']['duration_s']} s × {report['options']['repeat']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
