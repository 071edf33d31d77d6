"""Atomic checkpoints of the whole training state (accelerate's `save_state` plus our own state).

A checkpoint is `<output_dir>/checkpoints/step-XXXXXXXX/`: accelerate writes student (and LRM)
weights, optimizers, LR scheduler, grad scaler and every process's RNG states, and the registered
objects (EMA target, `TrainState` with the data position). It is first written under a temporary
name and renamed when every process has finished, so a directory with the final name is always
complete; the newest `keep` are kept.
"""
from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from rglcd.fsutil import replace_dir

PATTERN = re.compile(r"^step-(\d{8})$")
INFO = "checkpoint.json"


@dataclass
class TrainState:
    """The loop's own counters; saved with every checkpoint (registered with accelerate)."""
    step: int = 0                 # optimizer steps done
    micro_batches: int = 0        # micro-batches consumed per process: the data position
    bad_in_row: int = 0           # consecutive skipped (non-finite) steps
    bad_total: int = 0
    examples: int = 0             # examples seen, all processes together

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, int(value))


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (step, path), oldest first."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := PATTERN.match(p.name)) and (p / INFO).is_file()]
    return sorted(found)


def find_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """'auto': newest complete checkpoint or None; 'none'/None: None; else that checkpoint dir (must exist)."""
    if resume in (None, "none", "never"):
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / INFO).is_file():
        raise FileNotFoundError(f"resume: {resume!r} is not a complete checkpoint directory (no {INFO}); "
                                "allowed: auto, none, or a checkpoints/step-XXXXXXXX directory")
    return path


def refuse_newer_checkpoints(output_dir: str | Path, resumed: Path | None) -> None:
    """A run must not start behind checkpoints already in its output_dir: pruning keeps the highest steps,
    so its own checkpoints would be deleted and a later resume="auto" would continue the other run."""
    start = json.loads((resumed / INFO).read_text())["step"] if resumed is not None else 0
    newer = [path for step, path in list_checkpoints(output_dir) if step > start]
    if newer:
        raise ValueError(f"train.output_dir {str(output_dir)!r} already holds checkpoints past step {start} "
                         f"(newest {newer[-1].name}); use a new output_dir, or resume=auto to continue that run")


def save_checkpoint(accelerator, output_dir: str | Path, state: TrainState, keep: int) -> Path:
    """Collective: every process calls it. Returns the final checkpoint path."""
    root = checkpoint_root(output_dir)
    final = root / f"step-{state.step:08d}"
    tmp = root / f".tmp-step-{state.step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / INFO).write_text(json.dumps({**state.state_dict(), "num_processes": accelerator.num_processes}) + "\n")
        replace_dir(tmp, final)  # a re-save of the same step (e.g. SIGTERM right after a scheduled checkpoint)
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def check_compatible(path: Path, num_processes: int) -> None:
    """RNG states are per process: resuming with another process count is refused with a clear error."""
    saved = json.loads((path / INFO).read_text()).get("num_processes", 1)
    if saved != num_processes:
        raise ValueError(f"checkpoint {path} was written by {saved} processes, this run has {num_processes}; "
                         "resume with the same number of processes (or start a new output_dir)")
