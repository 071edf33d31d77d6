"""Per-step metrics: a JSONL file (always) and TensorBoard (when installed); main process only.

On resume the JSONL is cut back to the checkpoint's step, so the file always describes one run
whose steps appear once and in order, whatever the interruptions.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def read_metrics_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a run's metrics.jsonl, in order ([] when the file does not exist yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    def __init__(self, path: Path, resume_step: int = 0, tensorboard_dir: Path | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = [r for r in read_metrics_jsonl(path) if r.get("step", 0) <= resume_step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(path, "a")
        self._tb = self._tensorboard(tensorboard_dir)

    @staticmethod
    def _tensorboard(folder: Path | None):
        if folder is None:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: JSONL only
            return None
        return SummaryWriter(str(folder))

    def log(self, record: dict[str, Any]) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in clean.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
