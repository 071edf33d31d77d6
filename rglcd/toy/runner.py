"""The toy replication: train every row's student with the project's own step, sample, measure, report.

    results = run_toy(ToyConfig(), out_dir="benchmarks/toy", cache_dir="~/.cache/rglcd/toy", device="cpu")

Rows: the data itself; the teacher (50-step DDIM + CFG); the LCD-only student and the RG-LCD students
(direct expert reward at each beta, LRM at each beta), each at 1/2/4/8 LCM steps. Every row is trained
and sampled once per seed of `toy.seeds`; `aggregate` reports the mean and the spread over seeds. Within a
seed every student starts from the same teacher, sees the same batches and the same per-example draws
(`rglcd.step` seeds them by (seed, step, index)), so rows differ only by the reward term. The pieces of the method are the
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

def train_student(world, toy: ToyConfig, exp: Experiment, seed: int, device: torch.device,
                  say: Log) -> tuple[torch.nn.Module, dict]:
    """`toy.student_steps` RG-LCD steps (docs/method.md 2-4) from the teacher; returns the student UNet and its record."""
    mcfg = method_config(toy, "lrm" if exp.guidance == "lrm" else "direct", exp.beta, world.path, seed)
    teacher, sf = world.teacher, world.teacher.vae.config.scaling_factor
    torch.manual_seed(seed)                                       # the new w-projection: same init in every row
    student = make_student(teacher.unet, mcfg.model.time_cond_proj_dim).to(device)
    target = make_target(student)
    optimizer = make_optimizer(trainable(student), mcfg.train)
    side = build_guidance(mcfg, None, device, torch.float32)       # nothing, the expert, or LRM + expert
    batches, lrm_gen = torch.Generator().manual_seed(seed + 100), torch.Generator().manual_seed(seed + 200)
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
            say(f"  {exp.name} seed {seed} step {step + 1}/{toy.student_steps}: {_mean_tail(history, 0.2)}")
    return student.eval().requires_grad_(False), {
        "name": exp.name, "seed": seed, "guidance": exp.guidance, "beta": exp.beta, "steps": toy.student_steps,
        "seconds": time.perf_counter() - started, "last_20pct": _mean_tail(history, 0.2),
        "first": history[0], "method_config": _config_dict(mcfg)}


def _mean_tail(history: list[dict], frac: float) -> dict[str, float]:
    tail = history[-max(1, int(len(history) * frac)):]
    keys = [k for k, v in tail[0].items() if v is not None]
    return {k: round(sum(r[k] for r in tail) / len(tail), 6) for k in keys}


def _config_dict(cfg) -> dict:
    return {k: v for k, v in to_dict(cfg).items() if k in ("model", "distill", "reward", "lrm", "train")}


# ---------------------------------------------------------------- the run

@dataclass
class Bench:
    """What every image set is measured with (`rglcd.toy.metrics.measure`) and sampled by."""
    world: Any
    toy: ToyConfig
    mcfg: Any                 # the method config of the eval section (steps, guidance scales)
    expert: Any               # the registered toy reward, the one RG-LCD optimises
    reference: Any            # Gaussian stats of the judge's features of the held-out images
    teacher_model: Any
    prompts: list[str]


def seed_baselines(bench: Bench, seed: int) -> tuple[list[dict], dict]:
    """The data and teacher rows of one seed, and what the students of that seed are measured against."""
    toy, prompts = bench.toy, bench.prompts
    teacher_images = sample_images(samplers(bench.mcfg, None, bench.teacher_model)["teacher"], prompts, seed)
    cols = (bench.expert, bench.world.judge, bench.reference, teacher_images, toy.hf_cutoff)
    real_images = data_images(bench.world, prompts, seed)
    rows = [{"model": "data", "guidance": "-", "beta": None, "steps": None, "seed": seed,
             **measure(real_images, prompts, *cols)},
            {"model": "teacher", "guidance": "-", "beta": None, "steps": toy.teacher_steps, "seed": seed,
             **measure(teacher_images, prompts, *cols)}]
    return rows, {"cols": cols, "grids": {"data": real_images, "teacher": teacher_images}}


def student_rows(bench: Bench, exp: Experiment, seed: int, model, cols: tuple,
                 latency: dict | None) -> tuple[list[dict], torch.Tensor]:
    """One trained student (`model`: its sampling model) at every eval step count: its rows (with latency when
    measured) and the images at the most steps (for samples.png)."""
    toy = bench.toy
    rows, images = [], None
    for steps in toy.eval_steps:
        images = sample_images(samplers(bench.mcfg, model, bench.teacher_model)[f"student-{steps}"], bench.prompts, seed)
        row = {"model": exp.name, "guidance": exp.guidance, "beta": exp.beta, "steps": steps, "seed": seed,
               **measure(images, bench.prompts, *cols)}
        if latency is not None:
            row.update(latency_ms=1e3 * latency["student"][str(steps)]["seconds_per_image"],
                       speedup=latency["speedup"][str(steps)])
        rows.append(row)
    return rows, images


def run_toy(toy: ToyConfig, out_dir: str | Path, cache_dir: str | Path, device: str = "cpu",
            say: Log = print) -> dict[str, Any]:
    """Build or load the world, run every experiment at every seed, write results.json, RESULTS.md, samples.png."""
    started, device = time.perf_counter(), torch.device(device)
    say(f"toy world {toy.world.key()} (cache {cache_dir}) ...")
    mcfg = method_config(toy)                                     # its eval section: steps, guidance scales
    world = load_or_build_world(toy.world, cache_dir, device, mcfg)
    say(f"  world ready in {time.perf_counter() - started:.0f} s: teacher {world.info['teacher']['checks'][-1]}")
    bench = Bench(world, toy, mcfg, load_reward(TOY_REWARD, str(world.path), device=device),
                  gaussian_stats(features(world.judge, world.reference.images.to(device))),
                  from_teacher(world.teacher), prompt_set(toy.eval_repeats))
    baselines = {seed: seed_baselines(bench, seed) for seed in toy.seeds}
    seed_rows = [row for rows, _ in baselines.values() for row in rows]
    grids, training, first = dict(baselines[toy.seeds[0]][1]["grids"]), [], toy.seeds[0]
    for exp in experiments(toy):
        for seed in toy.seeds:
            say(f"training {exp.name} (seed {seed}) ...")
            student, record = train_student(world, toy, exp, seed, device, say)
            training.append(record)
            model = from_teacher(world.teacher, unet=student)
            latency = _latency(bench, model) if seed == first else None
            if latency is not None and "latency_ms" not in baselines[first][0][1]:     # the teacher row
                baselines[first][0][1].update(latency_ms=1e3 * latency["teacher"]["seconds_per_image"], speedup=1.0)
            rows, images = student_rows(bench, exp, seed, model, baselines[seed][1]["cols"], latency)
            seed_rows += rows
            grids.setdefault(exp.name, images)
            say(f"  {exp.name} seed {seed}: " + ", ".join(f"{r['steps']} steps reward {r['reward']:.3f} "
                                                        f"acc {r['accuracy']:.2f} fd {r['fd']:.2f}" for r in rows))
    rows = aggregate(seed_rows, toy.seeds)
    results = {
        "title": "RG-LCD toy replication (CPU)", "rows": rows, "seed_rows": seed_rows, "training": training,
        "claims": evaluate_claims(rows, toy), "config": asdict(toy), "world": world.info,
        "expert": {"reward": TOY_REWARD, "temperature": bench.expert.temperature},
        "prompts": {"count": len(bench.prompts), "distinct": len(set(bench.prompts)), "seeds": list(toy.seeds)},
        "environment": {"device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
                        "python": platform.python_version(), "machine": platform.machine()},
        "wall_s": time.perf_counter() - started,
    }
    write_results(results, grids, bench.prompts, out_dir)
    say(f"done in {results['wall_s']:.0f} s; results in {out_dir}")
    return results


def _latency(bench: Bench, model) -> dict:
    toy = bench.toy
    return latency_report(model, bench.teacher_model, list(toy.eval_steps), toy.teacher_steps, toy.eval_guidance,
                          toy.world.teacher_guidance, batch=1, repeats=toy.latency_repeats)


METRICS = ("reward", "accuracy", "fd", "hf_ratio", "hf_share")


def aggregate(seed_rows: list[dict], seeds: tuple[int, ...]) -> list[dict]:
    """One row per (model, steps): the mean of each metric over seeds, its sample standard deviation
    (`<metric>_std`, 0 with one seed) and the per-seed values (`<metric>_by_seed`, in `seeds` order).
    Latency, measured with the first seed only, is that seed's."""
    groups: dict[tuple, list[dict]] = {}
    for row in seed_rows:
        groups.setdefault((row["model"], row["steps"]), []).append(row)
    out = []
    for (model, steps), rows in groups.items():
        rows = sorted(rows, key=lambda r: seeds.index(r["seed"]))
        agg = {k: rows[0][k] for k in ("model", "guidance", "beta", "steps")}
        for k in METRICS:
            values = torch.tensor([r[k] for r in rows], dtype=torch.float64)
            agg.update({k: values.mean().item(), f"{k}_std": values.std().item() if len(rows) > 1 else 0.0,
                        f"{k}_by_seed": values.tolist()})
        agg.update({k: rows[0][k] for k in ("latency_ms", "speedup") if k in rows[0]})
        out.append(agg)
    return out
