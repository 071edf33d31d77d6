"""What an evaluation leaves behind: metrics.json and a self-contained HTML page.

metrics.json: `summary` holds the plain numbers the pipeline compares (reward, teacher_reward, reward_margin,
fid, hf_ratio, speedup_<n>, hps/teacher_hps/hps_margin when HPSv2.1 is scored, ...); `gate` holds the
decision and the name of the reward it compared (`gate.reward`, eval.gate_reward), which the page shows
beside the reward rows; every other section says what its numbers measured (counts, resolution,
steps, device, versions). Non-finite numbers are written as null. The HTML page embeds every image as
base64 PNG (no external files): a sample grid (prompts x [teacher, student at each step count]) and the
metrics tables.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import Any

import torch


def finite(obj: Any) -> Any:
    """The same structure with NaN/inf replaced by None (strict JSON), tensors and paths made plain."""
    if isinstance(obj, dict):
        return {str(k): finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return finite(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_metrics(metrics: dict, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(finite(metrics), indent=2, allow_nan=False) + "\n")
    return path


def png_data_uri(image: torch.Tensor) -> str:
    """(3, H, W) in [0, 1] -> 'data:image/png;base64,...'."""
    from rglcd.sample import to_pil

    buffer = io.BytesIO()
    to_pil(image[None])[0].save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)) and len(value) > 12:
        return _fmt(list(value[:12])) + f" ... ({len(value)} items)"
    return str(value)


def _rows(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested dicts to (dotted key, value) rows."""
    if isinstance(data, dict):
        rows = []
        for key, value in data.items():
            rows += _rows(value, f"{prefix}.{key}" if prefix else str(key))
        return rows
    return [(prefix, _fmt(data))]


def _table(rows: list[tuple[str, str]], cls: str = "") -> str:
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f'<table class="{cls}">{body}</table>'


def _grid(prompts: list[str], columns: list[tuple[str, torch.Tensor]]) -> str:
    """Rows = prompts, columns = (label, images (N, 3, H, W)); cell i of a column is its image i."""
    head = "<tr><th>prompt</th>" + "".join(f"<th>{html.escape(label)}</th>" for label, _ in columns) + "</tr>"
    rows = []
    for i, prompt in enumerate(prompts):
        cells = "".join(f'<td><img alt="{html.escape(label)}: {html.escape(prompt)}" src="{png_data_uri(images[i])}"></td>'
                        for label, images in columns if images is not None and i < len(images))
        rows.append(f'<tr><th class="prompt">{html.escape(prompt)}</th>{cells}</tr>')
    return f'<table class="grid">{head}{"".join(rows)}</table>'


GATE_REWARD_KEYS = ("reward", "teacher_reward", "reward_margin")  # summary numbers of eval.gate_reward


def _summary_rows(summary: dict, reward: str | None) -> list[tuple[str, str]]:
    """The summary's rows, the gate reward's labelled with its name ("reward (toy)")."""
    return [(f"{key} ({reward})" if reward and key in GATE_REWARD_KEYS else key, value)
            for key, value in _rows(summary)]


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def models_table(metrics: dict) -> str:
    """One row per model (teacher, student at each step count): every score on the evaluation prompts,
    FID, high-frequency ratio to the teacher, seconds per image and speed-up; '-' where not measured."""
    prompt_set, latency = metrics.get("prompt_set") or {}, metrics.get("latency") or {}
    means = prompt_set.get("means") or {}
    if not means:
        return ""
    fids = metrics.get("fid_by_model") or ({} if not metrics.get("fid") else
                                           {f"student-{metrics['fid'].get('steps')}": metrics["fid"].get("value")})
    scores = [k for k in next(iter(means.values())) if k != "hf_share"]
    head = ["model", *scores, "FID", "HF ratio", "s / image", "speed-up"]
    rows = []
    for label, values in means.items():
        steps = label.split("-")[1] if label != "teacher" else None
        hf = 1.0 if steps is None else (prompt_set.get("high_frequency", {}).get("by_steps", {}).get(steps) or {}).get("ratio")
        timing = latency.get("teacher") if steps is None else (latency.get("student") or {}).get(steps)
        speed = 1.0 if steps is None else (latency.get("speedup") or {}).get(steps)
        cells = [values.get(k) for k in scores] + [fids.get(label), hf, (timing or {}).get("seconds_per_image"), speed]
        rows.append(f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{_cell(v)}</td>" for v in cells) + "</tr>")
    header = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    return f'<h2>Models</h2><table class="models"><tr>{header}</tr>{"".join(rows)}</table>'


_CSS = """body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top;font-size:13px}
.grid img{width:160px;height:auto;image-rendering:pixelated}.grid th.prompt{max-width:220px;font-weight:normal}
.fail{color:#b00;font-weight:bold}.pass{color:#070;font-weight:bold}"""


def render_html(metrics: dict, prompts: list[str], columns: list[tuple[str, torch.Tensor]],
                title: str = "rglcd evaluation") -> str:
    """The report page: gate decision, one row per model, sample grid, plain numbers, then every metric section."""
    gate = metrics.get("gate") or {}
    verdict = ("<p class='pass'>gate: PASSED</p>" if gate.get("passed")
               else f"<p class='fail'>gate: FAILED ({html.escape(', '.join(gate.get('failed_rules', [])))})</p>")
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>", verdict if gate else "",
             _table(list((gate.get("reasons") or {}).items()), "gate"), models_table(metrics),
             "<h2>Samples</h2>", _grid(prompts, columns),
             "<h2>Summary</h2>", _table(_summary_rows(metrics.get("summary", {}), gate.get("reward")), "summary")]
    for section, data in metrics.items():
        if section not in ("summary", "gate"):
            parts += [f"<h2>{html.escape(section)}</h2>", _table(_rows(data), "details")]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(metrics: dict, prompts: list[str], columns: list[tuple[str, torch.Tensor]], path: str | Path,
               title: str = "rglcd evaluation") -> Path:
    path = Path(path)
    path.write_text(render_html(finite(metrics), prompts, columns, title))
    return path
