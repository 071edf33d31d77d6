"""Everything a run writes besides checkpoints: run info, metrics, progress bar, validation grids, curves,
the HTML report and, at the end, the exported student (main process only, except collective saves)."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rglcd.data.prompts import load_prompts
from rglcd.export import export_student
from rglcd.lrm import save_lrm
from rglcd.models import load_teacher
from rglcd.train.checkpoint import list_checkpoints, save_checkpoint
from rglcd.train.metrics import MetricsLog, read_metrics_jsonl
from rglcd.train.report import plot_curves, write_report
from rglcd.train.runinfo import write_run_info
from rglcd.train.setup import merged_unet, save_lora_adapter
from rglcd.train.validation import pick_prompts, validation_grid


@dataclass
class TrainResult:
    output_dir: Path
    steps: int                          # optimizer steps done
    interrupted: bool                   # stopped by SIGTERM after checkpointing
    resumed_from: Path | None
    checkpoint: Path | None             # newest checkpoint
    model_dir: Path | None              # stock diffusers export (None when interrupted)
    report: Path | None
    bad_steps: int
    last: dict[str, Any] = field(default_factory=dict)   # last metrics record


class Outputs:
    def __init__(self, run, data_info: dict[str, Any], resumed: Path | None):
        self.run, self.main = run, run.accelerator.is_main_process
        self.data_info, self.resumed = data_info, resumed
        self.metrics_path = run.out / "metrics.jsonl"
        self.metrics = None
        self.prompts: list[str] = []
        self.reported: tuple[int, Path | None] | None = None   # (step, report path) of the last report written
        if self.main:
            write_run_info(run.cfg, run.out, data_info, run.accelerator.num_processes, str(run.accelerator.device),
                           resumes=run.state.resumes, execution=run.execution, warm_start=run.warm_start)
            self.metrics = MetricsLog(self.metrics_path, run.state.step, run.out / "tensorboard")
            self.prompts = pick_prompts(load_prompts(run.cfg.data.prompts), run.cfg.train.validation_prompts)

    @contextlib.contextmanager
    def progress(self):
        from tqdm.auto import tqdm

        cfg = self.run.cfg
        bar = tqdm(total=cfg.train.max_steps, initial=self.run.state.step, disable=not self.main,
                   desc="rglcd train", unit="step", dynamic_ncols=True)
        try:
            yield bar
        finally:
            bar.close()
            if self.metrics is not None:
                self.metrics.close()

    def after_step(self, record: dict[str, Any], bar) -> None:
        run = self.run
        if self.main:
            self.metrics.log(record)
            shown = {k: f"{record[k]:.4g}" for k in ("lcd_loss", "reward", "lrm_loss") if record.get(k) is not None}
            bar.set_postfix(**shown, img_s=f"{record['examples_per_s']:.1f}")
            bar.update(1)
        if record["step"] % run.cfg.train.validation_every == 0:
            self.validate()
        run.hook("step", run=run, step=record["step"], record=record)

    def validate(self) -> Path | None:
        run, path = self.run, None
        if self.main:
            path = run.out / "validation" / f"step-{run.state.step:08d}.png"
            with run.accelerator.autocast():
                validation_grid(run.teacher, run.accelerator.unwrap_model(run.student), run.target, self.prompts,
                                path, seed=run.cfg.train.seed)
        run.accelerator.wait_for_everyone()
        return path

    def checkpoint(self) -> Path:
        run = self.run
        path = save_checkpoint(run, self.data_info)
        self.write_report()
        return path

    def write_report(self) -> Path | None:
        """The HTML report at the current step (drawn once per step: the final checkpoint's is reused)."""
        run = self.run
        if self.reported is not None and self.reported[0] == run.state.step:
            return self.reported[1]
        if not self.main:
            return None
        records = read_metrics_jsonl(self.metrics_path)
        curves = plot_curves(records, run.out / "loss_curves.png")
        grids = sorted((run.out / "validation").glob("step-*.png"))
        summary = {"steps": run.state.step, "max_steps": run.cfg.train.max_steps, "examples": run.state.examples,
                   "processes": run.accelerator.num_processes, "bad_steps": run.state.bad_total,
                   "data": self.data_info, "resumed_from": str(self.resumed) if self.resumed else None,
                   "reward": f"{run.cfg.reward.name} ({run.cfg.reward.guidance})", "preset": run.cfg.preset}
        self.reported = (run.state.step, write_report(run.out, records, summary, grids, curves))
        return self.reported[1]


def start_outputs(run, data_info: dict[str, Any], resumed: Path | None) -> Outputs:
    return Outputs(run, data_info, resumed)


def export_model(run) -> Path:
    """Stock diffusers pipeline of the (LoRA-merged) student at <output_dir>/model; the LoRA adapter at
    <output_dir>/lora and the fine-tuned LRM at <output_dir>/lrm when the run has them."""
    cfg, student = run.cfg, run.accelerator.unwrap_model(run.student)
    teacher = run.teacher
    if next(teacher.vae.parameters()).dtype != torch.float32:  # export full-precision VAE/text encoder
        teacher = load_teacher(cfg.model.teacher, cfg.model.cache_dir, cfg.model.revision)
    unet = merged_unet(student).float().cpu()
    out = export_student(unet, teacher, run.out / "model", cfg=cfg, teacher_ref=cfg.model.teacher, overwrite=True)
    if cfg.train.lora_rank > 0 and cfg.train.lora_save_adapter:
        save_lora_adapter(student, run.out / "lora")
    if run.guidance.finetunes:  # the fine-tuned LRM with its own optimizer state (docs/method.md 7.4)
        save_lrm(run.guidance.lrm, run.out / "lrm", run.guidance.lrm_optimizer, extra={"steps": run.state.step})
    return out


def finish_run(run, outputs: Outputs, interrupted: bool, resumed: Path | None,
               record: dict[str, Any]) -> TrainResult:
    done = list_checkpoints(run.out)
    if not interrupted and (not done or done[-1][0] != run.state.step):
        outputs.checkpoint()
    report = outputs.write_report()
    model_dir = None
    if not interrupted and outputs.main:
        model_dir = export_model(run)
    run.accelerator.wait_for_everyone()
    done = list_checkpoints(run.out)
    return TrainResult(output_dir=run.out, steps=run.state.step, interrupted=interrupted, resumed_from=resumed,
                       checkpoint=done[-1][1] if done else None, model_dir=model_dir, report=report,
                       bad_steps=run.state.bad_total, last=record)
