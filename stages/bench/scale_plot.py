"""``lum plot scale``: the peak memory and time per user of ``lum bench scale`` reports, side by side.

``scale_series(reports)`` reduces each report to one value per stage and measure (the larger of its run days,
as the README tables show day 2's peaks); ``write_plot(reports, path)`` draws four panels, one bar per report in
each stage's group: peak RSS of the Python driver, of its Python workers and of the Spark JVM (MiB), and wall
microseconds per user. Flat bars across user counts are the goal of the bench; a bar that grows with users is
the stage to look at. Reports must differ in ``users`` (the legend names them by it).
"""

from __future__ import annotations

from typing import Any

from stages.bench.scale import DAILY

STAGES = ("ingest", *DAILY)  # the bench's order
MEASURES = (("driver", "Python driver, peak RSS (MiB)"), ("workers", "Python workers, peak RSS (MiB)"),
            ("jvm", "Spark JVM, peak RSS (MiB)"), ("us_per_user", "wall time per user (µs)"))


def scale_series(reports: list[dict[str, Any]]) -> dict[int, dict[str, dict[str, float]]]:
    """{users: {stage: {driver, workers, jvm, us_per_user}}}: per stage the most over its run days.

    ValueError names a report without ``users``/``stages`` or two reports of the same user count."""
    out: dict[int, dict[str, dict[str, float]]] = {}
    for i, report in enumerate(reports):
        users, stages = report.get("users"), report.get("stages")
        if not isinstance(users, int) or users < 1 or not isinstance(stages, dict) or not stages:
            raise ValueError(f"plot scale: report {i + 1} is not a `lum bench scale` report (no users or stages)")
        if users in out:
            raise ValueError(f"plot scale: two reports of {users} users; give one report per user count")
        per: dict[str, dict[str, float]] = {}
        for label, entry in stages.items():
            stage = label.partition("@")[0]
            rss = entry["peak_rss_mb"]
            value = {"driver": rss["driver"], "workers": rss["workers"], "jvm": rss["jvm"],
                     "us_per_user": entry["seconds"] / users * 1e6}
            old = per.get(stage)
            per[stage] = value if old is None else {k: max(old[k], value[k]) for k in value}
        out[users] = per
    return dict(sorted(out.items()))


def _users(n: int) -> str:
    for div, unit in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if n >= div and n % (div // 10) == 0:
            return f"{n / div:g}{unit} users"
    return f"{n:,} users"


def write_plot(reports: list[dict[str, Any]], path: str, *, title: str = "") -> None:
    """Four panels of grouped bars (stages x reports) into the PNG ``path``."""
    series = scale_series(reports)
    # deferred: matplotlib is only needed here, and the Agg backend must be chosen before pyplot loads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [s for s in STAGES if any(s in per for per in series.values())]
    width = 0.8 / len(series)
    fig, axes = plt.subplots(2, 2, figsize=(11, 6.5))
    for ax, (key, label) in zip(axes.flat, MEASURES):
        for j, (users, per) in enumerate(series.items()):
            xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(stages))]
            values = [per[s][key] if s in per else 0.0 for s in stages]
            bars = ax.bar(xs, values, width, label=_users(users))
            for bar, v in zip(bars, values):
                if v:
                    ax.annotate(f"{v:,.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                ha="center", va="bottom", fontsize=6)
        ax.set_xticks(range(len(stages)), stages)
        ax.set_title(label, fontsize=10)
    axes.flat[0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
