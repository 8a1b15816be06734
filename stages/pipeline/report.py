"""The demo's HTML report: four matplotlib plots (Agg backend, PNG files beside the HTML) and tables.

``write_report(out_dir, data) -> path``. ``data`` keys (all optional except ``title``):
- ``loss``: {"points": [(step, loss)...] of the scratch training, "daily": [(ds, loss)...]}
- ``retrieval``: {"hr@10": float, "ndcg@10": float, "target_cond_hr@10": float}
- ``auc``: {"auc_without_lum": float, "auc_with_lum": float, "lift": float}
- ``timings``: [{"ds": str, "sequences": s, "pretrain": s, "infer": s, "join": s, "maintain": s}, ...]
- ``summary``: dict shown as a key/value table; ``query``: list of row dicts (the sample lookup).
The page is self-contained apart from the PNGs (same folder).
"""

from __future__ import annotations

import html
import os
from typing import Any

STAGE_COLORS = {"sequences": "#4c72b0", "pretrain": "#dd8452", "infer": "#55a868", "join": "#c44e52",
                "maintain": "#8172b3"}


def _plt():
    # deferred: matplotlib is only needed when a report is written, and Agg must be chosen before pyplot loads
    import matplotlib

    matplotlib.use("Agg")  # no display; safe inside Airflow workers and tests
    import matplotlib.pyplot as plt

    return plt


def plot_loss(loss: dict[str, Any], path: str) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    points = loss.get("points") or []
    if points:
        axes[0].plot([p[0] for p in points], [p[1] for p in points], marker=".")
    axes[0].set(title="scratch training (InfoNCE)", xlabel="step", ylabel="loss")
    daily = loss.get("daily") or []
    if daily:
        axes[1].plot([d[0][5:] for d in daily], [d[1] for d in daily], marker="o")
    axes[1].set(title="daily continuation: last loss", xlabel="day", ylabel="loss")
    axes[1].tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_bars(values: dict[str, float], title: str, ylabel: str, path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    names = list(values)
    bars = ax.bar(names, [values[n] for n in names], color=["#8c8c8c", "#4c72b0", "#55a868"][: len(names)])
    for bar, name in zip(bars, names):
        ax.annotate(f"{values[name]:.4f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    lo = min(values.values()) if values else 0.0
    if lo > 0.4:  # AUCs: zoom in so the lift is visible
        ax.set_ylim(lo - 0.05, max(values.values()) + 0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_timings(timings: list[dict[str, Any]], path: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.2))
    days = [t["ds"][5:] for t in timings]
    bottom = [0.0] * len(timings)
    for stage, color in STAGE_COLORS.items():
        values = [float(t.get(stage) or 0.0) for t in timings]
        ax.bar(days, values, bottom=bottom, label=stage, color=color)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(title="per-stage wall time of each daily run", xlabel="day", ylabel="seconds")
    ax.legend(fontsize=8)
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 6:
        return "[" + ", ".join(_fmt(v) for v in value[:4]) + f", ... ({len(value)} values)]"
    return "" if value is None else str(value)


def write_report(out_dir: str, data: dict[str, Any]) -> str:
    """Write ``index.html`` and its PNGs into ``out_dir``; returns the HTML path."""
    os.makedirs(out_dir, exist_ok=True)
    sections = [f"<h1>{html.escape(data['title'])}</h1>"]
    if data.get("summary"):
        sections.append("<h2>Summary</h2>" + _table([{"key": k, "value": v} for k, v in data["summary"].items()]))
    if data.get("loss"):
        plot_loss(data["loss"], os.path.join(out_dir, "loss.png"))
        sections.append('<h2>Training loss</h2><img src="loss.png">')
    if data.get("retrieval"):
        plot_bars(data["retrieval"], "next-item retrieval (leave-last-out)", "score",
                  os.path.join(out_dir, "retrieval.png"))
        sections.append('<h2>HR@10</h2><img src="retrieval.png">')
    if data.get("auc"):
        auc = data["auc"]
        plot_bars({"without LUM": auc["auc_without_lum"], "with LUM": auc["auc_with_lum"]},
                  f"reference DLRM test AUC (lift {auc['lift']:+.4f})", "AUC", os.path.join(out_dir, "auc.png"))
        sections.append('<h2>AUC with and without LUM features</h2><img src="auc.png">')
    if data.get("lifts"):
        sections.append("<h2>Lift per consumer (test AUC, with vs without the LUM columns)</h2>"
                        + _table(data["lifts"]))
    if data.get("knowledge"):
        sections.append("<h2>The knowledge tables alone vs popularity (first item after the knowledge day)</h2>"
                        + _table(data["knowledge"]))
    if data.get("timings"):
        plot_timings(data["timings"], os.path.join(out_dir, "timings.png"))
        sections.append('<h2>Per-stage timings</h2><img src="timings.png">' + _table(data["timings"]))
    if data.get("query") is not None:
        sections.append("<h2>Sample query</h2>" + _table(data["query"]))
    style = ("body{font-family:sans-serif;max-width:980px;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 8px;font-size:13px}img{max-width:100%}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(data['title'])}</title>" \
           f"<style>{style}</style></head><body>{''.join(sections)}</body></html>"
    path = os.path.join(out_dir, "index.html")
    with open(path, "w") as fh:
        fh.write(page)
    return path
