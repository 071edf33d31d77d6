"""Resuming a run: which checkpoint, whether this config may continue it, and the record of what changed.

    resumed = resume_run(run, "auto", data_info)    # after build_run, before the outputs are written

- Which: "auto" takes the newest checkpoint that verifies against its manifest (rglcd.train.checkpoint).
  Newer ones that do not verify are moved aside to `checkpoints/corrupt-step-XXXXXXXX` (kept for a
  look, never deleted) with a warning naming the checkpoint and the file; when none verifies the run
  stops with every reason listed. An explicit checkpoint directory must verify.
- Whether: the config saved in the checkpoint is compared with this run's. Settings that change what
  is computed (method, seed, data, model, optimizer, precision, batch layout...) are refused, with the
  list of keys; settings that only change what is logged, how often the run checkpoints or validates,
  how long it runs (train.max_steps, to extend it) or things training never reads (eval, storage,
  registry, pipeline) are accepted.
- Record: each resume appends {from, step, at, changed, skipped} to TrainState.resumes, which every
  later checkpoint and run.json carry.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from rglcd.train.checkpoint import (CheckpointError, check_compatible, checkpoint_root, list_checkpoints,
                                    load_checkpoint, read_info, verify_checkpoint)

# Keys (or whole sections, ending in ".") a resume may change: they do not alter what the run computes.
RESUMABLE = (
    "preset",                                  # a name; the values it set are compared one by one
    "train.max_steps", "train.checkpoint_every", "train.keep_checkpoints", "train.validation_every",
    "train.validation_prompts", "train.max_bad_steps", "train.output_dir", "train.lora_save_adapter",
    "data.num_workers", "data.read_ahead",     # the stream's order does not depend on them (rglcd.data.stream)
    "data.prompts",                            # validation grids only
    "data.train",                              # compared through the data version instead (below)
    "data.min_image_size", "data.max_caption_tokens", "data.shard_size", "data.precompute_latents",  # prep only
    "model.cache_dir",
    "lrm.pretrain_steps", "lrm.pretrain_lr", "lrm.pretrain_batch_size",            # pretraining only
    "eval.", "storage.", "registry.", "pipeline.",                                   # later steps only
)


def find_resume(output_dir: str | Path, resume: str | None) -> Path | None:
    """'auto': newest checkpoint directory or None (not verified); 'none'/None: None; else that directory."""
    if resume in (None, "none", "never"):
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise FileNotFoundError(f"resume: {resume!r} is not a checkpoint directory; "
                                "allowed: auto, none, or a checkpoints/step-XXXXXXXX directory")
    return path


def select_checkpoint(accelerator, output_dir: Path, resume: str | None) -> tuple[Path | None, list[str]]:
    """Collective. The checkpoint to resume from (verified) and the names of the corrupt ones set aside."""
    if resume not in (None, "none", "never", "auto"):
        path = find_resume(output_dir, resume)
        _warn_unlisted(accelerator, path, verify_checkpoint(path))
        return path, []
    if find_resume(output_dir, resume) is None:
        return None, []
    bad: list[tuple[Path, CheckpointError]] = []
    chosen = None
    for _, path in reversed(list_checkpoints(output_dir)):
        try:
            _warn_unlisted(accelerator, path, verify_checkpoint(path))
            chosen = path
            break
        except CheckpointError as err:
            bad.append((path, err))
    if chosen is None:
        reasons = "; ".join(f"{p.name}: {e}" for p, e in bad)
        raise CheckpointError(f"no intact checkpoint in {checkpoint_root(output_dir)} ({reasons}); "
                              "resume=none with a new train.output_dir starts over")
    accelerator.wait_for_everyone()            # every process has verified before any is moved
    if accelerator.is_main_process:
        for path, err in bad:
            aside = _set_aside(path)
            warnings.warn(f"checkpoint {path} is corrupt ({err}); moved to {aside}; resuming from {chosen.name}",
                          stacklevel=2)
    accelerator.wait_for_everyone()
    return chosen, [p.name for p, _ in bad]


def _set_aside(path: Path) -> Path:
    aside = path.with_name(f"corrupt-{path.name}")
    n = 1
    while aside.exists():
        aside, n = path.with_name(f"corrupt-{path.name}.{n}"), n + 1
    path.rename(aside)
    return aside


def _warn_unlisted(accelerator, path: Path, unlisted: list[str]) -> None:
    if unlisted and accelerator.is_main_process:
        warnings.warn(f"checkpoint {path}: ignoring files its manifest does not list (never read): "
                      f"{', '.join(unlisted[:10])}", stacklevel=3)


def refuse_newer_checkpoints(output_dir: str | Path, start: int) -> None:
    """A run must not start behind checkpoints already in its output_dir: pruning keeps the highest steps,
    so its own checkpoints would be deleted and a later resume="auto" would continue the other run."""
    newer = [path for step, path in list_checkpoints(output_dir) if step > start]
    if newer:
        raise ValueError(f"train.output_dir {str(output_dir)!r} already holds checkpoints past step {start} "
                         f"(newest {newer[-1].name}); use a new output_dir, or resume=auto to continue that run")


# ---------------------------------------------------------------- the config

def _flat(config: dict[str, Any]) -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}: one level, as the sections of rglcd.config.schema."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{name}": v for name, v in value.items()})
        else:
            out[key] = value
    return out


def _resumable(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUMABLE)


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> dict[str, list]:
    """Dotted key -> [saved, now] for every setting that differs."""
    old, new = _flat(saved), _flat(now)
    return {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _same_data(saved: dict[str, Any], now: dict[str, Any]) -> bool:
    """Same data version: equal content hashes where both have one, else the same data spec."""
    if saved.get("content_hash") and now.get("content_hash"):
        return saved["content_hash"] == now["content_hash"]
    return saved.get("spec") == now.get("spec")


def check_resume_config(path: Path, info: dict[str, Any], cfg, data: dict[str, Any]) -> dict[str, list]:
    """Refuse a config that would change the run saved at `path`; returns the accepted changes."""
    from rglcd.config.fields import to_dict

    changes = config_changes(info.get("config") or {}, to_dict(cfg))
    refused = [k for k in changes if not _resumable(k)]
    if not _same_data(info.get("data") or {}, data):
        refused.append("data")
        changes["data"] = [(info.get("data") or {}).get("spec"), data.get("spec")]
    step = info["state"]["step"]
    if cfg.train.max_steps < step:
        refused.append("train.max_steps")
    if refused:
        listed = "; ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise ValueError(f"resume from {path}: these settings differ from the checkpoint's and would change the "
                         f"run: {listed}. Allowed on resume: logging, checkpoint/validation cadence, "
                         "train.max_steps >= the checkpoint's step, eval/storage/registry/pipeline; "
                         "start a new train.output_dir (or resume=none there) for a different run")
    return changes


# ---------------------------------------------------------------- the whole resume

def resume_run(run, resume: str | None, data: dict[str, Any]) -> Path | None:
    """Collective. Choose and verify the checkpoint, check this run may continue it, restore it, and
    record the resume in run.state.resumes. Returns the checkpoint path (None: a fresh start)."""
    path, skipped = select_checkpoint(run.accelerator, run.out, resume)
    start = read_info(path)["state"]["step"] if path is not None else 0
    refuse_newer_checkpoints(run.out, start)
    if path is None:
        return None
    check_compatible(path, run.accelerator.num_processes)
    info = read_info(path)
    changes = check_resume_config(path, info, run.cfg, data)
    load_checkpoint(run, path)
    run.state.resumes.append({"from": str(path), "step": run.state.step, "skipped": skipped,
                              "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "changed": changes})
    return path
