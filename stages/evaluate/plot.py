"""The ``evaluate.png`` plot of ``lum evaluate``."""

from __future__ import annotations

import math
from typing import Any


def write_plot(report: dict[str, Any], path: str) -> None:
    """Two panels: test AUC of both runs (bars) and their test AUC per epoch.

    ``report``: the evaluate.json dict (``without_lum`` / ``with_lum`` runs, ``lift`` and the window)."""
    # deferred: matplotlib is only needed here, and the Agg backend must be chosen before pyplot loads
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base, lum = report["without_lum"], report["with_lum"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names, values = ["without LUM", "with LUM"], [base["auc"], lum["auc"]]
    bars = ax1.bar(names, values, color=["#999999", "#1f77b4"])
    for bar, v in zip(bars, values):
        ax1.text(bar.get_x() + bar.get_width() / 2, v, f"{v:.4f}", ha="center", va="bottom")
    lo = min(v for v in values if not math.isnan(v)) if not all(math.isnan(v) for v in values) else 0.5
    ax1.set_ylim(max(0.0, lo - 0.05), min(1.0, max(values) + 0.03) if not math.isnan(max(values)) else 1.0)
    ax1.set_title(f"test AUC (lift {report['lift']:+.4f})")
    for run, style in ((base, "--"), (lum, "-")):
        ep = [e["epoch"] for e in run["epochs"]]
        ax2.plot(ep, [e["test_auc"] for e in run["epochs"]], style, marker="o",
                 label=f"test AUC {'with' if run is lum else 'without'} LUM")
    ax2.set_xticks([e["epoch"] for e in base["epochs"]])
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("test AUC")
    ax2.legend()
    ax2.set_title(f"train {report['train_start']}..{report['train_end']}, test ..{report['test_end']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
