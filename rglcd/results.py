"""Finished steps as plain numbers: what `rglcd train` left in its output directory, and the summary of an
evaluation. Plain means what KFP Metrics, pipeline conditions, the registry and `--json` output accept:
finite floats under string keys, paths as strings.

    found = training_outputs("runs/latest")      # model_dir, report, metrics_file, metrics (last values)
    summary = evaluation_summary(evaluate(cfg, model_dir, out_dir))
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rglcd.train.metrics import read_metrics_jsonl

# What a finished `rglcd train` leaves in its output directory (rglcd.train.outputs writes them).
TRAINING_OUTPUTS = {"model_dir": "model", "report": "report.html", "metrics_file": "metrics.jsonl"}


def finite_numbers(values: dict[str, Any]) -> dict[str, float]:
    """The finite plain numbers of a mapping, as floats (booleans, strings, NaN and infinities are left out)."""
    return {str(k): float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def training_outputs(output_dir: str | Path) -> dict[str, Any]:
    """Where `rglcd train` left the exported student, the HTML report and the metrics JSONL in `output_dir`,
    and under "metrics" the last finite value of every number the metrics logged."""
    out = Path(output_dir)
    found = {name: out / rel for name, rel in TRAINING_OUTPUTS.items()}
    missing = [str(path) for path in found.values() if not path.exists()]
    if missing:
        raise FileNotFoundError(f"training finished without {', '.join(missing)}; see the training log")
    last: dict[str, float] = {}
    for record in read_metrics_jsonl(found["metrics_file"]):
        last.update(finite_numbers(record))
    return {**{k: str(v) for k, v in found.items()}, "metrics": last}


def evaluation_summary(result: Any) -> dict[str, Any]:
    """Plain numbers, page, metrics file and gate decision of an `rglcd.evaluate.evaluate` result."""
    gate = result.gate
    return {"numbers": finite_numbers(result.metrics.get("summary", {})), "html": str(result.html_path),
            "metrics_file": str(result.metrics_path),
            "gate": {"passed": bool(gate.passed), "failed_rules": list(gate.failed_rules),
                     "reasons": dict(gate.reasons), "reward": str(gate.reward)}}
