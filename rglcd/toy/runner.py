"""The toy replication: train every row's student with the project's own step, sample, measure, report.

    results = run_toy(ToyConfig(), out_dir="benchmarks/toy", cache_dir="~/.cache/rglcd/toy", device="cpu")

Rows: the data itself; the teacher (50-step DDIM + CFG); the LCD-only student and the RG-LCD students
(direct expert reward at each beta, LRM at each beta), each at 1/2/4/8 LCM steps. Every student starts
from the same teacher, sees the same batches and the same per-example draws (`rglcd.step` seeds them by
(seed, step, index)), so rows differ only by the reward term. The pieces of the method are the
project's: `rglcd.step.lcd_step`, `rglcd.optim.optimizer_update`, `rglcd.lrm.pretrain_lrm` / `lrm_finetune_step`,
`rglcd.sample.lcm_sample` / `ddim_sample`, `rglcd.evaluate` (HF energy ratio, latency, Frechet distance).
"""
from __future__ import annotations

import logging
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from rglcd.config import to_dict
from rglcd.evaluate.core import samplers
from rglcd.evaluate.latency import latency_report
from rglcd.lrm import lrm_finetune_step
from rglcd.models import make_student, make_target
from rglcd.optim import make_optimizer, optimizer_update, trainable
from rglcd.rewards import load_reward
from rglcd.sample import from_teacher
from rglcd.step import lcd_step
from rglcd.toy.classifier import features
from rglcd.toy.config import TOY_REWARD, ToyConfig, method_config
from rglcd.toy.data import prompt_set
from rglcd.toy.metrics import data_images, gaussian_stats, measure, sample_images
from rglcd.toy.report import evaluate_claims, write_results
from rglcd.toy.world import load_or_build_world
from rglcd.train.guidance import build_guidance

log = logging.getLogger(__name__)
Log = Callable[[str], None]


@dataclass(frozen=True)
class Experiment:
    name: str
    guidance: str     # "none" (plain LCD), "direct" (expert through the VAE decode) or "lrm"
    beta: float


def experiments(toy: ToyConfig) -> list[Experiment]:
    """LCD-only, then RG-LCD with the direct reward at each beta, then with the LRM at each beta."""
    return ([Experiment("lcd", "none", 0.0)]
            + [Experiment(f"rg-direct-b{b:g}", "direct", b) for b in toy.direct_betas]
            + [Experiment(f"rg-lrm-b{b:g}", "lrm", b) for b in toy.lrm_betas])


# ---------------------------------------------------------------- student training

def train_student(world, toy: ToyConfig, exp: Experiment, device: torch.device, say: Log) -> tuple[torch.nn.Module, dict]:
    """`toy.student_steps` RG-LCD steps (docs/method.md 2-4) from the teacher; returns the student UNet and its record."""
    mcfg = method_config(toy, "lrm" if exp.guidance == "lrm" else "direct", exp.beta, world.path)
    teacher, sf = world.teacher, world.teacher.vae.config.scaling_factor
    torch.manual_seed(toy.seed)                                   # the new w-projection: same init in every row
    student = make_student(teacher.unet, mcfg.model.time_cond_proj_dim).to(device)
    target = make_target(student)
    optimizer = make_optimizer(trainable(student), mcfg.train)
    side = build_guidance(mcfg, None, device, torch.float32)       # nothing, the expert, or LRM + expert
    batches, lrm_gen = torch.Generator().manual_seed(toy.seed + 100), torch.Generator().manual_seed(toy.seed + 200)
    history, started = [], time.perf_counter()
    for step in range(toy.student_steps):
        idx = torch.randint(len(world.train), (toy.batch_size,), generator=batches)       # same in every row
        batch = {"latent_moments": world.moments[idx], "captions": [world.train.captions[i] for i in idx.tolist()],
                 "index": idx}
        out = lcd_step(student, target, teacher, batch, mcfg, step, reward=side.student_reward)
        out.loss.backward()
        norm, _ = optimizer_update(student, target, optimizer, mcfg, loss_finite=math.isfinite(out.loss.item()))
        record = {"lcd_loss": out.lcd_loss.item(), "grad_norm": norm,
                  "train_reward": None if out.reward is None else out.reward.item()}
        if side.finetunes:                                        # docs/method.md 4: after the student's update
            record.update(lrm_finetune_step(side.lrm, side.lrm_optimizer, side.expert, teacher.vae,
                                            out.pred.detach() / sf, out.target / sf, out.z0 / sf,
                                            batch["captions"], mcfg, generator=lrm_gen))
        history.append(record)
        if (step + 1) % max(1, toy.student_steps // 5) == 0:
            say(f"  {exp.name} step {step + 1}/{toy.student_steps}: {_mean_tail(history, 0.2)}")
    return student.eval().requires_grad_(False), {
        "name": exp.name, "guidance": exp.guidance, "beta": exp.beta, "steps": toy.student_steps,
        "seconds": time.perf_counter() - started, "last_20pct": _mean_tail(history, 0.2),
        "first": history[0], "method_config": _config_dict(mcfg)}


def _mean_tail(history: list[dict], frac: float) -> dict[str, float]:
    tail = history[-max(1, int(len(history) * frac)):]
    keys = [k for k, v in tail[0].items() if v is not None]
    return {k: round(sum(r[k] for r in tail) / len(tail), 6) for k in keys}


def _config_dict(cfg) -> dict:
    return {k: v for k, v in to_dict(cfg).items() if k in ("model", "distill", "reward", "lrm", "train")}


# ---------------------------------------------------------------- the run

def run_toy(toy: ToyConfig, out_dir: str | Path, cache_dir: str | Path, device: str = "cpu",
            say: Log = print) -> dict[str, Any]:
    """Build or load the world, run every experiment, write results.json, RESULTS.md and samples.png."""
    started, device = time.perf_counter(), torch.device(device)
    say(f"toy world {toy.world.key()} (cache {cache_dir}) ...")
    mcfg = method_config(toy)                                     # its eval section: steps, guidance scales
    world = load_or_build_world(toy.world, cache_dir, device, mcfg)
    say(f"  world ready in {time.perf_counter() - started:.0f} s: teacher {world.info['teacher']['checks'][-1]}")
    expert = load_reward(TOY_REWARD, str(world.path), device=device)     # the registered toy expert
    prompts = prompt_set(toy.eval_repeats)
    reference = gaussian_stats(features(world.judge, world.reference.images.to(device)))
    teacher_model = from_teacher(world.teacher)
    teacher_images = sample_images(samplers(mcfg, None, teacher_model)["teacher"], prompts, toy.seed)
    cols = (expert, world.judge, reference, teacher_images, toy.hf_cutoff)
    real_images = data_images(world, prompts)
    rows = [{"model": "data", "guidance": "-", "beta": None, "steps": None, **measure(real_images, prompts, *cols)},
            {"model": "teacher", "guidance": "-", "beta": None, "steps": toy.teacher_steps,
             **measure(teacher_images, prompts, *cols)}]
    grids, training = {"data": real_images, "teacher": teacher_images}, []
    for exp in experiments(toy):
        say(f"training {exp.name} ...")
        student, record = train_student(world, toy, exp, device, say)
        training.append(record)
        model = from_teacher(world.teacher, unet=student)
        lat = latency_report(model, teacher_model, list(toy.eval_steps), toy.teacher_steps, toy.eval_guidance,
                             toy.world.teacher_guidance, batch=1, repeats=toy.latency_repeats)
        if rows[1].get("latency_ms") is None:
            rows[1].update(latency_ms=1e3 * lat["teacher"]["seconds_per_image"], speedup=1.0)
        for steps in toy.eval_steps:
            images = sample_images(samplers(mcfg, model, teacher_model)[f"student-{steps}"], prompts, toy.seed)
            rows.append({"model": exp.name, "guidance": exp.guidance, "beta": exp.beta, "steps": steps,
                         **measure(images, prompts, *cols),
                         "latency_ms": 1e3 * lat["student"][str(steps)]["seconds_per_image"],
                         "speedup": lat["speedup"][str(steps)]})
            if steps == max(toy.eval_steps):
                grids[exp.name] = images
        say(f"  {exp.name}: " + ", ".join(f"{r['steps']} steps reward {r['reward']:.3f} acc {r['accuracy']:.2f} "
                                          f"fd {r['fd']:.2f} hf {r['hf_ratio']:.2f}" for r in rows if r["model"] == exp.name))
    results = {
        "title": "RG-LCD toy replication (CPU)", "rows": rows, "training": training,
        "claims": evaluate_claims(rows, toy), "config": asdict(toy), "world": world.info,
        "prompts": {"count": len(prompts), "distinct": len(set(prompts)), "seed": toy.seed},
        "environment": {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "python": platform.python_version(), "machine": platform.machine()},
        "wall_s": time.perf_counter() - started,
    }
    write_results(results, grids, prompts, out_dir)
    say(f"done in {results['wall_s']:.0f} s; results in {out_dir}")
    return results
