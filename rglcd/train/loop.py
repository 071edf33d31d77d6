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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from rglcd.data.sources import open_source
from rglcd.data.stream import StreamSpec, make_loader
from rglcd.models import load_teacher, make_target
from rglcd.optim import make_optimizer, make_scheduler, step_or_skip, trainable
from rglcd.step import lcd_step
from rglcd.train.checkpoint import TrainState, list_checkpoints
from rglcd.train.fast import prepare_unets
from rglcd.train.guidance import Guidance, build_guidance, finetune_lrm
from rglcd.train.outputs import TrainResult, finish_run, start_outputs
from rglcd.train.resume import resume_run
from rglcd.train.setup import build_student, weight_dtype
from rglcd.train.terms import StepTerms
from rglcd.train.tracking import open_tracking

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
    source = open_source(spec, cfg.data.remote_images, cfg.storage.cache_dir)
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
                      shuffle_buffer=cfg.data.shuffle_buffer, start_batch=start_batch,
                      max_pixels=cfg.data.max_image_pixels, read_ahead=cfg.data.read_ahead)
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


def micro_steps(run, batches) -> tuple[StepTerms, Any]:
    """Forward and backward over grad_accum micro-batches; returns the loss terms (on the device) and the last output."""
    acc, cfg, A = run.accelerator, run.cfg, run.cfg.train.grad_accum
    sums = StepTerms(acc.device, A)
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
        sums.add(out)
        run.hook("micro_batch", run=run, step=run.state.step, micro=micro)
    return sums, (out, batch)


def update(run, sums: StepTerms) -> tuple[dict[str, float], float, bool]:
    """Clip with accelerate (it unscales fp16 gradients first), read the loss terms (averaged over processes)
    and the grad norm back in one copy, then `rglcd.optim.step_or_skip`. Returns (terms, norm, bad)."""
    acc, cfg = run.accelerator, run.cfg
    terms, norm = sums.reduce(acc, acc.clip_grad_norm_(run.params, cfg.train.max_grad_norm))
    # The mean over processes of a non-finite loss is non-finite: finite here means finite on every process.
    bad = step_or_skip(acc.unwrap_model(run.student), run.target, run.optimizer, cfg,
                       loss_finite=math.isfinite(terms["loss"]), grad_norm=norm, scheduler=run.scheduler)
    return terms, norm, bad


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
    execution: dict[str, Any] = field(default_factory=dict)   # checkpointing/compile as resolved (run.json)

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
    execution = prepare_unets(cfg, teacher, student, target, acc.device)
    guidance = build_guidance(cfg, lrm_checkpoint, acc.device, dtype)
    optimizer = make_optimizer(trainable(student), cfg.train)
    scheduler = make_scheduler(optimizer, cfg.train)
    student, optimizer, scheduler = acc.prepare(student, optimizer, scheduler)
    state = TrainState()
    return Run(cfg, acc, Path(cfg.train.output_dir), teacher, student, target, optimizer, scheduler, guidance,
               state, trainable(acc.unwrap_model(student)), hooks or {}, execution)


def train(cfg, data_dir: str | None = None, lrm_checkpoint: str | None = None, resume: str | None = "auto",
          hooks: dict[str, Hook] | None = None) -> TrainResult:
    """Train the student on `data_dir` (a prep output, shards, a table or builtin:photos; default data.train).

    resume: "auto" (newest intact checkpoint in train.output_dir, if any), "none", or a checkpoint dir.
    hooks: optional callables "micro_batch"(run, step, micro), after each backward, and "step"(run, step,
    record), after each optimizer step (progress UIs, tests that inspect or interrupt a run).
    """
    run = build_run(cfg, lrm_checkpoint, hooks)
    acc = run.accelerator
    source, data_info = open_training_data(cfg, data_dir or cfg.data.train)
    resumed = resume_run(run, resume, data_info)   # verified, config compared, restored (rglcd.train.resume)
    outputs = start_outputs(run, data_info, resumed)
    batches = stream_for(cfg, source, acc, run.state.micro_batches)
    interrupted, record = False, {}
    tracking = open_tracking(cfg, data_info, run.out, acc.is_main_process, resumed is not None)
    with tracking as tracker, sigterm_flag() as flag, outputs.progress() as bar:
        while run.state.step < cfg.train.max_steps:
            record = train_step(run, batches)
            outputs.after_step(record, bar)
            tracker.log(record)
            interrupted = any_process(acc, flag["stop"])
            if interrupted or run.state.step % cfg.train.checkpoint_every == 0:
                outputs.checkpoint()
            if interrupted:
                tracker.interrupted = True
                break
    return finish_run(run, outputs, interrupted, resumed, record)


def train_step(run: Run, batches) -> dict[str, Any]:
    """One optimizer step (and the LRM update after it); returns its metrics record."""
    acc, cfg = run.accelerator, run.cfg
    started = time.perf_counter()
    sums, (out, batch) = micro_steps(run, batches)
    terms, norm, bad = update(run, sums)
    lrm = {}
    if not bad and run.guidance.finetunes and run.state.step % cfg.lrm.finetune_every == 0:
        with acc.autocast():
            lrm = finetune_lrm(run.guidance, run.teacher, out, batch, cfg, run.state.step, acc.process_index)
    run.state.step += 1
    examples = cfg.train.batch_size * cfg.train.grad_accum * acc.num_processes
    run.state.examples += examples
    check_bad_steps(run, bad, terms, norm)
    elapsed = time.perf_counter() - started
    return {"step": run.state.step, **terms, "reward": terms["reward"] if run.guidance.student_reward else None,
            "lrm_loss": lrm.get("lrm_loss"), "lrm_acc": lrm.get("lrm_acc"), "grad_norm": norm,
            "lr": run.scheduler.get_last_lr()[0], "bad_step": bad, "examples": run.state.examples,
            "step_time_s": elapsed, "examples_per_s": examples / elapsed}
