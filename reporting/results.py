"""Results of a measurement: run metadata, Markdown tables, JSON + Markdown files under benchmarks/results/."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


def run_info(**params: object) -> dict[str, object]:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=RESULTS.parent).stdout.strip()
    return {"git_commit": commit, "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "load_average_at_start": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "params": params}


def markdown_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, data: dict[str, object], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown.rstrip() + "\n")
    print(f"wrote {RESULTS / name}.json and .md")


def save_recall_plot(fig: Any, axes: Any, path: Path, xlabel: str) -> None:
    """Finish a figure of 10-recall@10 against lists probed (log2 x axes, one label each) and write it."""
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel(xlabel)
    axes[0].set_ylabel("10-recall@10 vs exact")
    import matplotlib.pyplot as plt  # only the benchmarks that plot need matplotlib

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
