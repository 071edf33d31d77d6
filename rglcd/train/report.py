"""Loss curves (PNG) and a self-contained HTML report (curves and validation grids inlined as base64)."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

CURVES = [("lcd_loss", "LCD loss"), ("reward", "reward R (mean)"), ("lrm_loss", "LRM fine-tuning loss")]


def plot_curves(records: list[dict[str, Any]], path: Path) -> Path:
    """One panel per term (LCD, reward, LRM); panels without data say so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(CURVES), figsize=(5 * len(CURVES), 3.6))
    for ax, (key, title) in zip(axes, CURVES):
        points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
        if points:
            ax.plot(*zip(*points), lw=1.2)
        else:
            ax.text(0.5, 0.5, "not used in this run", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    tmp.replace(path)
    return path


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(path.name)}">'


def write_report(out_dir: Path, records: list[dict[str, Any]], summary: dict[str, Any],
                 grids: list[Path], curves: Path) -> Path:
    """out_dir/report.html: run summary, loss curves and the latest validation grids, one file."""
    last = records[-1] if records else {}
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(json.dumps(v, default=str))}</td></tr>"
                   for k, v in {**summary, **{f"last.{k}": v for k, v in last.items()}}.items())
    shown = grids[-4:]
    sections = "".join(f"<h3>{html.escape(g.stem)}</h3>{_img(g)}" for g in shown) or "<p>none yet</p>"
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>rglcd training report</title>"
            f"<style>body{{font-family:sans-serif;margin:2em}}td{{padding:2px 8px;border-bottom:1px solid #ddd}}"
            f"img{{max-width:100%}}</style></head><body><h1>rglcd training report</h1>"
            f"<h2>Summary</h2><table>{rows}</table><h2>Loss curves</h2>{_img(curves)}"
            f"<h2>Validation samples (rows: student, EMA target; 4 LCM steps)</h2>{sections}</body></html>")
    path = out_dir / "report.html"
    tmp = path.with_name(".report.html.tmp")
    tmp.write_text(page)
    tmp.replace(path)
    return path
