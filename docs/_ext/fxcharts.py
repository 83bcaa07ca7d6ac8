"""Charts of the benchmarks' JSON (``bench/*.py --json FILE``, kept in docs/_data/).

One SVG per benchmark, ``bench-<name>.svg``, each carrying the machine, the
date of the run, the reference tools' versions and the run's note (the
machine was shared) under the plot. The JSON's shape is
:class:`bench._common.Report`'s.
"""

from __future__ import annotations

import json
import os
import statistics
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OURS = "#1f5fa8"
THEIRS = "#9e9e9e"


def _footer(figure: Any, report: dict[str, Any]) -> None:
    lines = [f"{report['machine']} · run {report['date']}"]
    if report.get("references"):
        lines.append("references: " + ", ".join(report["references"]))
    if report.get("note"):
        lines.append(report["note"])
    if report.get("smoke"):
        lines.append("SMOKE RUN (tiny sizes): not a measurement")
    figure.text(0.01, 0.01, "\n".join(lines), fontsize=7, color="#555555", va="bottom")


def _finish(figure: Any, report: dict[str, Any], path: str) -> None:
    """The footer under the plot, then the SVG at C{path}."""
    _footer(figure, report)
    figure.tight_layout(rect=(0, 0.145, 1, 1))
    figure.savefig(path, format="svg", metadata={"Date": None})
    plt.close(figure)


def _bars(axes: Any, labels: list[str], values: list[float], colors: list[str], unit: str) -> None:
    bars = axes.barh(labels, values, color=colors)
    axes.invert_yaxis()
    axes.set_xlabel(unit)
    for bar, value in zip(bars, values, strict=False):
        axes.text(
            bar.get_width(),
            bar.get_y() + bar.get_height() / 2,
            f" {value:.0f}",
            va="center",
            fontsize=8,
        )
    axes.grid(axis="x", alpha=0.3)


def chart_comparisons(report: dict[str, Any], title: str, path: str) -> None:
    """Each comparison: filexfer's bar above the reference's, in MB/s."""
    labels, values, colors = [], [], []
    seen = set()
    for comparison in report["comparisons"]:
        for side, color in (("ours", OURS), ("reference", THEIRS)):
            series = comparison[side]
            key = (series["label"], series["bytes"])
            if key in seen:
                continue
            seen.add(key)
            size = series["bytes"] / 2**20
            labels.append(f"{series['label']} ({size:.0f} MiB)")
            values.append(series["mbps"])
            colors.append(color)
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(labels) + 2.2))
    _bars(axes, labels, values, colors, "MB/s (10⁶ bytes per second, median of the runs)")
    ratios = "; ".join(f"{c['name']}: ratio {c['ratio']:.2f}" for c in report["comparisons"])
    axes.set_title(f"{title}\n{ratios}", fontsize=10)
    _finish(figure, report, path)


def chart_resume(report: dict[str, Any], path: str) -> None:
    """The small upload alone, during a resume's start, and the resume's own ok, in ms."""
    result = report["results"][0]
    labels = ["5-byte upload, alone", "5-byte upload, while a resume starts", "the resume's ok"]
    keys = ["small_alone_ms", "small_during_resume_ms", "resume_ok_ms"]
    values = [statistics.median(result[key]) for key in keys]
    figure, axes = plt.subplots(figsize=(8, 3.4))
    _bars(axes, labels, values, [OURS, OURS, THEIRS], "milliseconds (median)")
    axes.set_title(
        f"{result['name']}: a small upload is not held up by a resume's hashing\n"
        f"small upload done first in {result['small_done_first']}/{result['runs']} runs",
        fontsize=10,
    )
    _finish(figure, report, path)


def chart_concurrent(report: dict[str, Any], path: str) -> None:
    """Aggregate MB/s of parallel big uploads, and the many-small-uploads rate."""
    figure, (big, small) = plt.subplots(1, 2, figsize=(10, 3.6), width_ratios=(3, 2))
    labels, values, colors = [], [], []
    for comparison in report["comparisons"]:
        for side, color in (("ours", OURS), ("reference", THEIRS)):
            labels.append(comparison[side]["label"])
            values.append(comparison[side]["mbps"])
            colors.append(color)
    _bars(big, labels, values, colors, "aggregate MB/s")
    big.set_title("; ".join(c["name"] for c in report["comparisons"]), fontsize=9)
    for result in report["results"]:
        _bars(small, ["uploads/s"], [result["uploads_per_second"]], [OURS], "uploads per second")
        small.set_title(
            f"{result['name']}: {result['intact']}/{result['uploads']} intact,\n"
            f"server peak RSS {result['server_rss_bytes'] / 2**20:.0f} MiB",
            fontsize=9,
        )
    _finish(figure, report, path)


CHARTS = {
    "tcp": lambda r, p: chart_comparisons(
        r, "TCP, one file over loopback: filexfer (FX/1, verified) and socat", p
    ),
    "tftp": lambda r, p: chart_comparisons(r, "TFTP downloads over loopback: clients + servers", p),
    "peers": lambda r, p: chart_comparisons(
        r, "One verified file, then four at once: filexfer, rsync, socat + sync, wormhole", p
    ),
    "concurrent": chart_concurrent,
    "resume": chart_resume,
}


def draw_all(data: str, folder: str) -> None:
    """A chart for each benchmark whose JSON is in C{data}."""
    for name, chart in CHARTS.items():
        source = os.path.join(data, f"{name}.json")
        if not os.path.exists(source):
            continue
        with open(source, encoding="utf-8") as handle:
            report = json.load(handle)
        chart(report, os.path.join(folder, f"bench-{name}.svg"))
