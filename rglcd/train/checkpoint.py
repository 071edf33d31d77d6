"""Atomic, verified checkpoints of the whole training state, written and read without pickle.

A checkpoint is `<output_dir>/checkpoints/step-XXXXXXXX/`:

    model.safetensors          the student's weights (LoRA included), under their parameter names
    ema_target.safetensors     the EMA target (docs/method.md 2.4)
    optimizer.safetensors      AdamW state, scheduler.safetensors the LR schedule, scaler.safetensors (fp16)
    lrm.safetensors, lrm_optimizer.safetensors   the fine-tuned LRM and its optimizer (docs/method.md 4)
    rng-<rank>.safetensors     every process's python, numpy, torch CPU and CUDA RNG states
    checkpoint.json            counters (TrainState), process count, the resolved config and data version
    manifest.json              sha256 and size of every file above; written last

The state files use rglcd.train.statefile (safetensors body, JSON header): a checkpoint folder lives
on a shared volume and retries resume from it automatically, so loading it must never execute code.
accelerate's own save_state/load_state (accelerate/checkpointing.py, 1.15) is not used: it unpickles
`custom_checkpoint_*.pkl` with weights_only=False and ignores an unreadable RNG file. Files in a
checkpoint folder that its manifest does not list are never opened.

A checkpoint is first written under a temporary name and renamed when every process has finished, so
a directory with the final name was complete when written; the manifest tells whether it still is
(`verify_checkpoint`). The newest `train.keep_checkpoints` are kept.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rglcd.fsutil import replace_dir
from rglcd.train.statefile import StateFileError, load_state, save_state

PATTERN = re.compile(r"^step-(\d{8})$")
INFO, MANIFEST = "checkpoint.json", "manifest.json"
FORMAT, VERSION = "rglcd-checkpoint", 2
SUFFIX = ".safetensors"


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, corrupt or does not fit this run; the message names the file."""


@dataclass
class TrainState:
    """The loop's own counters and the run's resume history; saved with every checkpoint."""
    step: int = 0                 # optimizer steps done
    micro_batches: int = 0        # micro-batches consumed per process: the data position
    bad_in_row: int = 0           # consecutive skipped (non-finite) steps
    bad_total: int = 0
    examples: int = 0             # examples seen, all processes together
    resumes: list[dict[str, Any]] = field(default_factory=list)   # one record per resume (rglcd.train.resume)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key in ("step", "micro_batches", "bad_in_row", "bad_total", "examples"):
            setattr(self, key, int(state[key]))
        self.resumes = [dict(r) for r in state.get("resumes", [])]


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Checkpoint directories (step, path), oldest first (final names only: their writing had finished)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := PATTERN.match(p.name)) and p.is_dir()]
    return sorted(found)


def read_info(path: Path) -> dict[str, Any]:
    """checkpoint.json of a checkpoint, checked for its format."""
    file = Path(path) / INFO
    try:
        info = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CheckpointError(f"{file}: unreadable ({err})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("version") != VERSION:
        raise CheckpointError(f"{file}: not an {FORMAT} v{VERSION} checkpoint (written by another rglcd version; "
                              "start a new train.output_dir)")
    return info


def check_compatible(path: Path, num_processes: int) -> None:
    """RNG states are per process: resuming with another process count is refused with a clear error."""
    saved = read_info(path).get("num_processes", 1)
    if saved != num_processes:
        raise ValueError(f"checkpoint {path} was written by {saved} processes, this run has {num_processes}; "
                         "resume with the same number of processes (or start a new output_dir)")


# ---------------------------------------------------------------- what a checkpoint holds

def stateful_parts(run) -> dict[str, Any]:
    """name -> object with state_dict()/load_state_dict(), for everything of `run` that a resume restores."""
    acc = run.accelerator
    parts = {"model": acc.unwrap_model(run.student), "ema_target": run.target, "optimizer": run.optimizer,
             "scheduler": run.scheduler}
    if run.guidance.finetunes:
        parts.update(lrm=run.guidance.lrm, lrm_optimizer=run.guidance.lrm_optimizer)
    if acc.scaler is not None:
        parts["scaler"] = acc.scaler
    return parts


def rng_state() -> dict[str, Any]:
    """This process's RNG states (python, numpy, torch CPU, every CUDA device)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(file: Path) -> None:
    """Restore what `rng_state` saved to `file`; anything that does not fit is an error naming the file.
    CUDA states are restored for the devices this process sees (a GPU checkpoint holds one per device)."""
    state = load_state(file)
    want = {"python", "numpy", "torch"}
    if not isinstance(state, dict) or not want <= set(state) <= want | {"cuda"}:
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{file}: RNG state holds {got}, expected {sorted(want)} (+ cuda)")
    try:
        cuda = state.get("cuda", [])
        for t in [state["torch"], *(cuda if isinstance(cuda, list) else [None])]:
            if not isinstance(t, torch.Tensor) or t.dtype != torch.uint8 or t.dim() != 1:
                raise TypeError("torch and cuda states must be 1-d uint8 tensors")
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if cuda and torch.cuda.is_available():
            for device, t in enumerate(cuda[:torch.cuda.device_count()]):
                torch.cuda.set_rng_state(t, device)
    except (TypeError, ValueError, RuntimeError, IndexError) as err:
        raise CheckpointError(f"{file}: not a valid RNG state ({err})") from None


# ---------------------------------------------------------------- writing

def save_checkpoint(run, data: dict[str, Any]) -> Path:
    """Collective: every process calls it. Writes step-XXXXXXXX (replacing one of the same step), prunes
    to train.keep_checkpoints and returns the final path. `data`: the run's data description."""
    from rglcd.config.fields import to_dict

    acc, state = run.accelerator, run.state
    root = checkpoint_root(run.out)
    final, tmp = root / f"step-{state.step:08d}", root / f".tmp-step-{state.step:08d}"
    if acc.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    acc.wait_for_everyone()
    save_state(rng_state(), tmp / f"rng-{acc.process_index}{SUFFIX}")
    if acc.is_main_process:
        for name, obj in stateful_parts(run).items():
            save_state(obj.state_dict(), tmp / f"{name}{SUFFIX}")
    acc.wait_for_everyone()
    if acc.is_main_process:
        info = {"format": FORMAT, "version": VERSION, "state": state.state_dict(),
                "num_processes": acc.num_processes, "config": to_dict(run.cfg), "data": data}
        (tmp / INFO).write_text(json.dumps(info, indent=1, default=str) + "\n")
        write_manifest(tmp)
        replace_dir(tmp, final)  # a re-save of the same step (e.g. SIGTERM right after a scheduled checkpoint)
        for _, old in list_checkpoints(run.out)[:-run.cfg.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()
    return final


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> Path:
    """manifest.json: sha256 and size of every file in `folder` (read back from disk), written last."""
    files = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size}
             for p in sorted(folder.iterdir()) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({"format": FORMAT, "files": files}, indent=1) + "\n")
    return folder / MANIFEST


# ---------------------------------------------------------------- reading

def _manifest(path: Path) -> dict[str, dict]:
    file = path / MANIFEST
    if not file.is_file():
        raise CheckpointError(f"{file}: missing (the checkpoint was damaged, or written by another rglcd version)")
    try:
        files = json.loads(file.read_text())["files"]
        ok = isinstance(files, dict) and all(
            isinstance(n, str) and Path(n).name == n and n not in ("", ".", "..") and isinstance(e, dict)
            and isinstance(e.get("sha256"), str) and isinstance(e.get("bytes"), int) for n, e in files.items())
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{file}: unreadable ({err})") from None
    if not ok:
        raise CheckpointError(f"{file}: malformed (expected files: {{name: {{sha256, bytes}}}} with plain names)")
    return files


def verify_checkpoint(path: str | Path) -> list[str]:
    """Check every file against the manifest; raises CheckpointError naming the first bad file.
    Returns the names of files present but not in the manifest (never read)."""
    path = Path(path)
    files = _manifest(path)
    for name in (INFO, "model" + SUFFIX):
        if name not in files:
            raise CheckpointError(f"{path / MANIFEST}: does not list {name}")
    for name, entry in files.items():
        file = path / name
        if not file.is_file() or file.is_symlink():
            raise CheckpointError(f"{file}: missing (listed in {MANIFEST})")
        if file.stat().st_size != entry["bytes"] or _sha256(file) != entry["sha256"]:
            raise CheckpointError(f"{file}: corrupt (size or sha256 differs from {MANIFEST})")
    return sorted(p.name for p in path.iterdir() if p.name not in files and p.name != MANIFEST)


def load_checkpoint(run, path: Path) -> dict[str, Any]:
    """Restore everything `save_checkpoint` wrote into `run` (on every process); returns checkpoint.json.
    The checkpoint must have passed `verify_checkpoint`."""
    info = read_info(path)
    for name, obj in stateful_parts(run).items():
        file = path / f"{name}{SUFFIX}"
        if not file.is_file():
            raise CheckpointError(f"{file}: missing; this run needs it (was the checkpoint written with other settings?)")
        try:
            state = load_state(file)
            if isinstance(obj, torch.nn.Module):
                obj.load_state_dict(state, strict=True)
            else:
                obj.load_state_dict(state)
        except StateFileError as err:
            raise CheckpointError(str(err)) from None
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as err:
            raise CheckpointError(f"{file}: does not fit this run's {name} ({str(err)[:500]})") from None
    try:
        set_rng_state(path / f"rng-{run.accelerator.process_index}{SUFFIX}")
    except StateFileError as err:
        raise CheckpointError(str(err)) from None
    try:
        run.state.load_state_dict(info["state"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path / INFO}: bad 'state' entry ({err})") from None
    return info
