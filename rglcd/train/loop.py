"""The RG-LCD training program on accelerate (docs/architecture.md 2.7; docs/method.md 2-4).

    result = train(cfg, data_dir, lrm_checkpoint=None, resume="auto")

One optimizer step = `train.grad_accum` micro-batches of `train.batch_size` examples per process, each
through `rglcd.step.lcd_step`; then grad-norm clipping, AdamW, the LR schedule, the EMA target and,
with an LRM, its online fine-tuning. Mixed precision, gradient checkpointing, LoRA, DDP (one or many
nodes through torch.distributed's env vars) come from accelerate, peft and torch. Checkpoints hold
everything needed to continue bit-exactly; SIGTERM finishes the current step, checkpoints and stops.
"""
from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from rglcd.data.sources import open_source
from rglcd.data.stream import StreamSpec, make_loader
from rglcd.models import load_teacher, make_target
from rglcd.optim import make_optimizer, make_scheduler, optimizer_update, trainable
from rglcd.step import lcd_step
from rglcd.train.checkpoint import TrainState, check_compatible, find_resume, list_checkpoints, refuse_newer_checkpoints
from rglcd.train.guidance import Guidance, build_guidance, finetune_lrm
from rglcd.train.outputs import TrainResult, finish_run, start_outputs
from rglcd.train.setup import build_student, weight_dtype

Hook = Callable[..., None]


class NonFiniteLoss(RuntimeError):
    """`train.max_bad_steps` consecutive steps had a non-finite loss or gradient norm."""


# ---------------------------------------------------------------- setup

def make_accelerator(cfg):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if cfg.train.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("train.mixed_precision: 'fp16' needs a CUDA GPU; allowed on CPU: no, bf16")
    # Accumulation is explicit in the loop (no_sync + loss / A), and the schedule steps once per update.
    # cpu=True without CUDA: accelerate then picks up torchrun's env vars as a gloo process group.
    return Accelerator(mixed_precision=cfg.train.mixed_precision, step_scheduler_with_optimizer=False,
                       cpu=not torch.cuda.is_available(),
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])


def open_training_data(cfg, spec: str):
    """The source, and the data description recorded with the run; refuses latents that do not fit."""
    source = open_source(spec)
    manifest = getattr(source, "manifest", None) or {}
    latents = manifest.get("latents", {})
    if latents.get("precomputed") and latents.get("resolution") != cfg.model.resolution:
        raise ValueError(f"{spec}: latents were precomputed at {latents.get('resolution')} px, model.resolution is "
                         f"{cfg.model.resolution}; allowed: re-run `rglcd prep` at this resolution")
    info = {"spec": spec, "content_hash": manifest.get("content_hash"), "num_records": sum(source.unit_counts()),
            "latents": bool(latents.get("precomputed"))}
    return source, info


def stream_for(cfg, source, accelerator, start_batch: int):
    spec = StreamSpec(batch_size=cfg.train.batch_size, resolution=cfg.model.resolution, seed=cfg.train.seed,
                      rank=accelerator.process_index, world_size=accelerator.num_processes,
                      shuffle_buffer=cfg.data.shuffle_buffer, start_batch=start_batch)
    return iter(make_loader(source, spec, cfg.data.num_workers))


@contextlib.contextmanager
def sigterm_flag():
    """Yields a dict whose 'stop' turns True on SIGTERM (handler installed in the main thread only)."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: flag.update(stop=True))
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------- one optimizer step

def any_process(accelerator, value: bool) -> bool:
    """True when `value` is True on any process (collective)."""
    if accelerator.num_processes == 1:
        return value
    flag = torch.tensor([float(value)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def micro_steps(run, batches) -> tuple[dict[str, float], Any]:
    """Forward and backward over grad_accum micro-batches; returns the mean loss terms and the last output."""
    acc, cfg, A = run.accelerator, run.cfg, run.cfg.train.grad_accum
    sums = {"loss": 0.0, "lcd_loss": 0.0, "reward_loss": 0.0, "reward": 0.0}
    out = batch = None
    for micro in range(A):
        batch = next(batches)
        sync = contextlib.nullcontext() if micro == A - 1 else acc.no_sync(run.student)
        with sync:
            with acc.autocast():
                out = lcd_step(run.student, run.target, run.teacher, batch, cfg, run.state.micro_batches,
                               reward=run.guidance.student_reward)
            acc.backward(out.loss / A)
        run.state.micro_batches += 1
        for key in ("loss", "lcd_loss", "reward_loss"):
            sums[key] += float(getattr(out, key).detach()) / A
        sums["reward"] += (float(out.reward) if out.reward is not None else 0.0) / A
        run.hook("micro_batch", run=run, step=run.state.step, micro=micro)
    return sums, (out, batch)


def update(run, terms: dict[str, float]) -> tuple[float, bool]:
    """`rglcd.optim.optimizer_update` on accelerate: its grad clipping, a loss verdict agreed by all processes."""
    acc = run.accelerator
    loss_finite = not any_process(acc, not math.isfinite(terms["loss"]))
    return optimizer_update(acc.unwrap_model(run.student), run.target, run.optimizer, run.cfg,
                            loss_finite=loss_finite, clip_grad_norm=acc.clip_grad_norm_, scheduler=run.scheduler)


def check_bad_steps(run, bad: bool, terms: dict[str, float], norm: float) -> None:
    s = run.state
    s.bad_in_row, s.bad_total = (s.bad_in_row + 1, s.bad_total + 1) if bad else (0, s.bad_total)
    if s.bad_in_row >= run.cfg.train.max_bad_steps:
        last = list_checkpoints(run.out)
        raise NonFiniteLoss(
            f"{s.bad_in_row} consecutive steps with a non-finite loss or gradient (train.max_bad_steps="
            f"{run.cfg.train.max_bad_steps}) at step {s.step}: loss terms {terms}, grad norm {norm}. "
            f"Lower train.lr, check the data, or use train.mixed_precision=bf16/no. "
            f"Last good checkpoint: {last[-1][1] if last else 'none'}")


# ---------------------------------------------------------------- the run

@dataclass
class Run:
    """Everything one training run holds (what the step functions and the outputs read)."""
    cfg: Any
    accelerator: Any
    out: Path
    teacher: Any
    student: torch.nn.Module
    target: torch.nn.Module
    optimizer: Any
    scheduler: Any
    guidance: Guidance
    state: TrainState
    params: list
    hooks: dict[str, Hook]

    def hook(self, name: str, **kwargs) -> None:
        if name in self.hooks:
            self.hooks[name](**kwargs)


def build_run(cfg, lrm_checkpoint: str | None, hooks: dict[str, Hook] | None) -> Run:
    """Teacher, student (+ EMA target), reward side, optimizer and schedule, all prepared by accelerate."""
    from accelerate.utils import set_seed

    acc = make_accelerator(cfg)
    dtype = weight_dtype(cfg.train.mixed_precision, acc.device)
    teacher = load_teacher(cfg.model.teacher, cfg.model.cache_dir, cfg.model.revision, dtype=dtype, device=acc.device)
    set_seed(cfg.train.seed)  # right before the student's new guidance projection is drawn: runs repeat exactly
    student = build_student(teacher.unet, cfg.train, cfg.model.time_cond_proj_dim).to(acc.device)
    target = make_target(student)
    guidance = build_guidance(cfg, lrm_checkpoint, acc.device, dtype)
    optimizer = make_optimizer(trainable(student), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train)
    student, optimizer, scheduler = acc.prepare(student, optimizer, scheduler)
    state = TrainState()
    acc.register_for_checkpointing(target, state)
    guidance.register(acc)
    return Run(cfg, acc, Path(cfg.train.output_dir), teacher, student, target, optimizer, scheduler, guidance,
               state, trainable(acc.unwrap_model(student)), hooks or {})


def train(cfg, data_dir: str | None = None, lrm_checkpoint: str | None = None, resume: str | None = "auto",
          hooks: dict[str, Hook] | None = None) -> TrainResult:
    """Train the student on `data_dir` (a prep output, shards, a table or builtin:photos; default data.train).

    resume: "auto" (newest complete checkpoint in train.output_dir, if any), "none", or a checkpoint dir.
    hooks: optional callables "micro_batch"(run, step, micro), after each backward, and "step"(run, step,
    record), after each optimizer step (progress UIs, tests that inspect or interrupt a run).
    """
    run = build_run(cfg, lrm_checkpoint, hooks)
    acc = run.accelerator
    resumed = find_resume(run.out, resume)
    refuse_newer_checkpoints(run.out, resumed)
    if resumed is not None:
        check_compatible(resumed, acc.num_processes)
        acc.load_state(str(resumed))
    source, data_info = open_training_data(cfg, data_dir or cfg.data.train)
    outputs = start_outputs(run, data_info, resumed)
    batches = stream_for(cfg, source, acc, run.state.micro_batches)
    interrupted, record = False, {}
    with sigterm_flag() as flag, outputs.progress() as bar:
        while run.state.step < cfg.train.max_steps:
            record = train_step(run, batches)
            outputs.after_step(record, bar)
            interrupted = any_process(acc, flag["stop"])
            if interrupted or run.state.step % cfg.train.checkpoint_every == 0:
                outputs.checkpoint()
            if interrupted:
                break
    return finish_run(run, outputs, interrupted, resumed, record)


def train_step(run: Run, batches) -> dict[str, Any]:
    """One optimizer step (and the LRM update after it); returns its metrics record."""
    acc, cfg = run.accelerator, run.cfg
    started = time.perf_counter()
    terms, (out, batch) = micro_steps(run, batches)
    norm, bad = update(run, terms)
    lrm = {}
    if not bad and run.guidance.finetunes:
        with acc.autocast():
            lrm = finetune_lrm(run.guidance, run.teacher, out, batch, cfg, run.state.step, acc.process_index)
    run.state.step += 1
    examples = cfg.train.batch_size * cfg.train.grad_accum * acc.num_processes
    run.state.examples += examples
    check_bad_steps(run, bad, terms, norm)
    names = list(terms)
    means = acc.reduce(torch.tensor([terms[k] for k in names], device=acc.device), reduction="mean")
    terms = dict(zip(names, means.tolist()))  # over all processes: the loss of the global batch
    elapsed = time.perf_counter() - started
    return {"step": run.state.step, **terms, "reward": terms["reward"] if run.guidance.student_reward else None,
            "lrm_loss": lrm.get("lrm_loss"), "lrm_acc": lrm.get("lrm_acc"), "grad_norm": norm,
            "lr": run.scheduler.get_last_lr()[0], "bad_step": bad, "examples": run.state.examples,
            "step_time_s": elapsed, "examples_per_s": examples / elapsed}
