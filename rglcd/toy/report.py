"""The toy table and the paper's claims, judged from the measured numbers (written by `rglcd toy run`).

Each claim has a stated criterion, the numbers it was judged on and a verdict computed from them; a
claim that does not reproduce is reported as such. Files: results.json (everything), RESULTS.md
(the table, the claims, how the world was made), samples.png (one row of images per model).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rglcd.sample import save_grid
from rglcd.toy.config import claim_steps, toy_config_from_dict

GRID_COLUMNS = 16


def _row(rows: list[dict], model: str, steps: int | None = None) -> dict:
    return next(r for r in rows if r["model"] == model and (steps is None or r["steps"] == steps))


def _interp(x: float, points: list[tuple[float, float]]) -> float:
    """y at x on the piecewise-linear curve through (x, y) points (sorted by x; clamped at the ends)."""
    xs, ys = zip(*sorted(points))
    return float(np.interp(x, xs, ys))


GAIN_OVER_SPREAD = 3.0   # a reward gain counts when it is at least this many seed standard deviations


def _mean_std(row: dict, key: str) -> dict[str, float]:
    return {"mean": row[key], "std": row.get(f"{key}_std", 0.0)}


def reward_gain(row: dict, base: dict) -> dict[str, Any]:
    """`row` vs `base` (LCD-only, or the next smaller beta): mean reward gain, the seed spread it is compared
    with (the larger standard deviation over seeds of the two rows), and the verdict."""
    gain = row["reward"] - base["reward"]
    spread = max(row.get("reward_std", 0.0), base.get("reward_std", 0.0))
    return {**_mean_std(row, "reward"), "gain": gain, "spread": spread,
            "gain_over_spread": gain / spread if spread > 0 else None,
            "holds": gain > 0 and gain >= GAIN_OVER_SPREAD * spread}


def _gain_claim(name: str, which: str, students: list[dict], lcd: dict, s: int) -> dict[str, Any]:
    return {
        "claim": f"{name} raises the expert reward well beyond seed-to-seed noise",
        "criterion": f"at {s} steps, every {which} student's mean expert reward exceeds LCD-only's by at least "
                     f"{GAIN_OVER_SPREAD:g} x the seed spread (the larger standard deviation over seeds of the two rows)",
        "evidence": {"lcd": _mean_std(lcd, "reward"), **{r["model"]: reward_gain(r, lcd) for r in students}},
        "holds": bool(students) and all(reward_gain(r, lcd)["holds"] for r in students),
    }


def _beta_claim(direct: list[dict], s: int) -> dict[str, Any]:
    ordered = sorted(direct, key=lambda r: r["beta"])
    steps = {f"{a['model']} -> {b['model']}": reward_gain(b, a) for a, b in zip(ordered, ordered[1:])}
    return {
        "claim": "A larger beta gives a higher reward (direct)",
        "criterion": f"at {s} steps, along the direct beta sweep each larger beta's mean expert reward exceeds the "
                     f"previous one's by at least {GAIN_OVER_SPREAD:g} x the seed spread",
        "evidence": steps,
        "holds": bool(steps) and all(v["holds"] for v in steps.values()),
    }


def evaluate_claims(rows: list[dict], toy) -> list[dict[str, Any]]:
    """The paper's claims as the toy world can check them, each with criterion, evidence and verdict (`holds`)."""
    s = claim_steps(toy)
    teacher, lcd = _row(rows, "teacher"), _row(rows, "lcd", s)
    direct = [r for r in rows if r["guidance"] == "direct" and r["steps"] == s]
    lrm = [r for r in rows if r["guidance"] == "lrm" and r["steps"] == s]
    lcd_curve = {r["steps"]: {"accuracy": r["accuracy"], "fd": r["fd"]} for r in rows if r["model"] == "lcd"}
    claims = [{
        "claim": "Few-step LCM approaches the 50-step teacher",
        "criterion": f"LCD-only student at {s} steps: judge accuracy >= 0.9 x the teacher's and FD <= 2 x the teacher's",
        "evidence": {"teacher": {"accuracy": teacher["accuracy"], "fd": teacher["fd"]}, "lcd_by_steps": lcd_curve,
                     "speedup": lcd.get("speedup")},
        "holds": lcd["accuracy"] >= 0.9 * teacher["accuracy"] and lcd["fd"] <= 2 * teacher["fd"],
    }]
    if direct:
        claims += [_gain_claim("RG-LCD with the direct expert reward", "direct", direct, lcd, s)]
        claims += [_beta_claim(direct, s)] if len(direct) > 1 else []
    if lrm:
        claims.append(_gain_claim("RG-LCD with the LRM", "LRM-guided", lrm, lcd, s))
    if direct:
        big = max(direct, key=lambda r: r["beta"])
        claims.append({
            "claim": "Direct reward optimisation with a large beta raises high-frequency energy (reward hacking)",
            "criterion": f"HF energy ratio (vs the teacher) of the largest-beta direct student at {s} steps is "
                         f">= 1.1 x LCD-only's",
            "evidence": {"lcd": lcd["hf_ratio"], **{r["model"]: r["hf_ratio"] for r in direct}},
            "holds": big["hf_ratio"] >= 1.1 * lcd["hf_ratio"],
        })
    if direct and lrm:
        curve = [(lcd["reward"], lcd["hf_ratio"])] + [(r["reward"], r["hf_ratio"]) for r in direct]
        fd_curve = [(lcd["reward"], lcd["fd"])] + [(r["reward"], r["fd"]) for r in direct]
        matched = {r["model"]: {"reward": r["reward"], "hf_ratio": r["hf_ratio"], "fd": r["fd"],
                                "direct_hf_ratio_at_same_reward": _interp(r["reward"], curve),
                                "direct_fd_at_same_reward": _interp(r["reward"], fd_curve)} for r in lrm}
        claims.append({
            "claim": "The LRM variant raises high-frequency energy less at similar reward",
            "criterion": f"at {s} steps, each LRM student's HF ratio is below the direct students' HF ratio at the "
                         "same expert reward (linear interpolation over LCD-only and the direct beta sweep)",
            "evidence": matched,
            "holds": all(m["hf_ratio"] < m["direct_hf_ratio_at_same_reward"] for m in matched.values()),
        })
        claims.append({
            "claim": "The LRM variant has a better FD than direct optimisation at similar reward",
            "criterion": "as above, with the FD to held-out real images in place of the HF ratio",
            "evidence": {k: {"fd": m["fd"], "direct_fd_at_same_reward": m["direct_fd_at_same_reward"]}
                         for k, m in matched.items()},
            "holds": all(m["fd"] < m["direct_fd_at_same_reward"] for m in matched.values()),
        })
    return claims


# ---------------------------------------------------------------- files

def _fmt(value: Any, digits: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _pm(row: dict, key: str, digits: int) -> str:
    """'mean ± std' over seeds (the mean alone when a row has no spread recorded)."""
    if f"{key}_std" not in row:
        return _fmt(row[key], digits)
    return f"{row[key]:.{digits}f} ± {row[key + '_std']:.{digits}f}"


def table(rows: list[dict]) -> str:
    head = ("| model | reward guidance | beta | steps | reward | accuracy | FD | HF ratio | HF share "
            "| latency ms/img | speedup |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append("| " + " | ".join([
            r["model"], r["guidance"], _fmt(r["beta"], 3 if r["beta"] and r["beta"] < 1 else 1),
            _fmt(r["steps"], 0), _pm(r, "reward", 3), _pm(r, "accuracy", 3), _pm(r, "fd", 1),
            _pm(r, "hf_ratio", 2), _fmt(r["hf_share"], 4), _fmt(r.get("latency_ms"), 1),
            _fmt(r.get("speedup"), 1)]) + " |")
    return "\n".join(lines)


def _claims_md(claims: list[dict]) -> str:
    out = []
    for c in claims:
        verdict = "**reproduces**" if c["holds"] else "**does not reproduce**"
        out.append(f"- {c['claim']}: {verdict}.  \n  Criterion: {c['criterion']}.  \n"
                   f"  Numbers: `{json.dumps(c['evidence'], default=_round)}`")
    return "\n".join(out)


def _round(x: Any) -> Any:
    return round(x, 4) if isinstance(x, float) else str(x)


def _world_md(world: dict, temperature: float) -> str:
    w, t, c = world["config"], world["teacher"], world["classifiers"]
    return "\n".join([
        f"- Data: {w['train_images']} training and {w['reference_images']} held-out 32x32 images of coloured "
        "shapes (4 colours x 3 shapes x 4 positions = 48 captions such as \"a red circle on the left\"), "
        "grey backgrounds of random level and gradient, generated in code.",
        f"- VAE: the tiny factory's AutoencoderKL (2x down, 4x16x16 latents) trained {w['vae_steps']} steps; "
        f"held-out PSNR {world['vae']['reference_psnr_db']:.1f} dB, scaling factor {world['vae']['scaling_factor']:.4f}.",
        f"- Teacher: UNet2DConditionModel (the tiny factory's blocks plus a third level, `rglcd.toy.world.toy_unet`) + "
        f"tiny CLIP text encoder (real 49,408-token tokenizer), DDPM {w['teacher_prediction_type']}-prediction, "
        f"{t['steps']} steps (batch {w['teacher_batch_size']}); judge accuracy of its 50-step DDIM+CFG "
        f"{w['teacher_guidance']} samples (one per caption) at each check: "
        f"{', '.join(str(round(k['accuracy'], 3)) + ' @' + str(k['step']) for k in t['checks'])}.",
        f"- Expert reward: CNN classifier, R = mean over colour/shape/position of softmax(logits / {temperature:g})"
        "[caption attribute] (`rglcd.toy.reward`); "
        f"judge (held out, noise-augmented CNN) accuracy on held-out real images "
        f"{c['reference_accuracy']['judge']:.3f} (reward classifier {c['reference_accuracy']['reward']:.3f}).",
        f"- LRM: `rglcd.lrm` latent CLIP (tiny preset sizes) pretrained {world['lrm']['steps']} steps with "
        f"InfoNCE (loss {world['lrm']['first_loss']:.2f} -> {world['lrm']['last_loss']:.2f}), fine-tuned online "
        "against the expert during its RG-LCD runs.",
        f"- World build time on this machine: {sum(world['timings_s'].values()):.0f} s "
        f"({', '.join(f'{k} {v:.0f}' for k, v in world['timings_s'].items())}); cached after the first run.",
    ])


def _judged_by(results: dict[str, Any]) -> str:
    if results.get("claims_judged_by") != "rglcd toy report":
        return ""
    return "Judged again from the numbers above by `rglcd toy report` (today's criteria; nothing re-measured).\n\n"


def markdown(results: dict[str, Any]) -> str:
    toy, env = results["config"], results["environment"]
    train = "\n".join(f"| {t['name']} | {t.get('seed', '-')} | {t['seconds']:.0f} | `{json.dumps(t['last_20pct'])}` |"
                      for t in results["training"])
    return f"""# {results['title']}

Written by `rglcd toy run` ({results['wall_s'] / 60:.1f} min on {env['device']}, {env['threads']} threads,
torch {env['torch']}). Every number below was measured by that run; `results.json` holds them all.

## The toy world
{_world_md(results['world'], results['expert']['temperature'])}

## Table
Students: {toy['student_steps']} RG-LCD steps each (batch {toy['batch_size']}, lr {toy['lr']}, w ~ U[{toy['w_min']}, {toy['w_max']}]),
same batches and draws for every row of one seed; sampled with LCM at guidance {toy['eval_guidance']}. Teacher:
{toy['teacher_steps']}-step DDIM with CFG {toy['world']['teacher_guidance']}. {results['prompts']['count']} prompts (each of the
{results['prompts']['distinct']} captions {toy['eval_repeats']}x). Every row was trained (students) and sampled
(all rows) once per seed {', '.join(str(x) for x in toy['seeds'])}: a cell is the mean ± the standard deviation over
those seeds (`results.json` has each seed's value); latency is the first seed's.

- reward: the expert RM RG-LCD optimises (mean over the three attributes of the tempered classifier's
  probability of the caption's value, 0..1; `rglcd.toy.reward`).
- accuracy: the held-out judge reads colour, shape and position as the caption says.
- FD: Frechet distance of the judge's penultimate features to {toy['world']['reference_images']} held-out real images (an FID with the toy judge for Inception; lower is better).
- HF ratio: share of spectral energy above {toy['hf_cutoff']} cycles/px over the teacher's (`rglcd.evaluate.spectrum`); HF share: the share itself.
- latency: one image (batch 1), whole generation, median of {toy['latency_repeats']} (`rglcd.evaluate.latency`); speedup vs the teacher.

{table(results['rows'])}

## Claims
{_judged_by(results)}{_claims_md(results['claims'])}

## Training
| run | seed | seconds | mean of the last 20% of steps |
|---|---|---|---|
{train}

`samples.png`: one row per model, the first {GRID_COLUMNS} prompts, in this order: {', '.join(results.get('grid_rows', []))}
(students at {max(toy['eval_steps'])} steps, seed {toy['seeds'][0]}).
"""


def write_results(results: dict[str, Any], grids: dict[str, torch.Tensor], prompts: list[str],
                  out_dir: str | Path) -> Path:
    """results.json, RESULTS.md and samples.png in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = [k for k, v in grids.items() if v is not None]
    results["grid_rows"] = names
    n = min(GRID_COLUMNS, len(prompts))
    save_grid(torch.cat([grids[k][:n] for k in names]), out / "samples.png", ncols=n)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (out / "RESULTS.md").write_text(markdown(results))
    return out


def rejudge(out_dir: str | Path) -> dict[str, Any]:
    """Judge the claims of the run in `out_dir` again from its own numbers with today's criteria, and rewrite
    results.json and RESULTS.md (`rglcd toy report`); the measurements and samples.png are not touched."""
    folder = Path(out_dir)
    results = json.loads((folder / "results.json").read_text())
    results["claims"] = evaluate_claims(results["rows"], toy_config_from_dict(results["config"]))
    results["claims_judged_by"] = "rglcd toy report"
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str))
    (folder / "RESULTS.md").write_text(markdown(results))
    return results
