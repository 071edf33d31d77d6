"""`rglcd sample`: images from an exported student (LCM, 1/2/4/8 steps) or a teacher (DDIM + CFG)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from rglcd.cli._common import add_device_arg
from rglcd.config.args import add_config_args, config_from_args
from rglcd.devices import resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sample", help="generate images with the student (LCM) or the teacher (DDIM + CFG)")
    parser.add_argument("--model", required=True, metavar="REF",
                        help="exported student dir (rglcd export), or a teacher ref with --teacher")
    prompts = parser.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    prompts.add_argument("--prompts-file", metavar="FILE", help=".txt (one per line) or .json list of prompts")
    parser.add_argument("--steps", type=int, nargs="+", default=None,
                        help="LCM step counts, e.g. 1 2 4 8 (default: eval.steps); with --teacher: DDIM steps")
    parser.add_argument("--teacher", action="store_true", help="sample --model as a teacher: DDIM with CFG")
    parser.add_argument("--guidance", type=float, default=None,
                        help="guidance scale g (student: embedded as w = g - 1; default eval.guidance / "
                             "eval.teacher_guidance)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (default: eval.seed)")
    parser.add_argument("--resolution", type=int, default=None, help="image size in px (default: the UNet's)")
    add_device_arg(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory for PNGs and grid.png")
    add_config_args(parser)
    parser.set_defaults(func=_sample)


def _or(value, default):
    return default if value is None else value


def _sample(args: argparse.Namespace) -> None:
    import torch

    from rglcd.data.prompts import load_prompts
    from rglcd.sample import ddim_sample, lcm_sample, load_sampling_model, save_grid, to_pil

    cfg = config_from_args(args)
    prompts = args.prompt if args.prompt else load_prompts(args.prompts_file, field="--prompts-file")
    if any(not p.strip() for p in prompts):
        raise ValueError("--prompt: empty prompts are not allowed")
    model = load_sampling_model(args.model, cfg.model.cache_dir, resolve_device(args.device))
    if args.teacher:
        runs = {f"teacher-{n}": (ddim_sample, n, _or(args.guidance, cfg.eval.teacher_guidance))
                for n in (args.steps or [cfg.eval.teacher_steps])}
    else:
        runs = {f"steps-{n}": (lcm_sample, n, _or(args.guidance, cfg.eval.guidance)) for n in (args.steps or cfg.eval.steps)}
    if any(n < 1 for _, n, _ in runs.values()):
        raise ValueError(f"--steps: step counts must be >= 1, got {args.steps}")
    out, seed = Path(args.out), _or(args.seed, cfg.eval.seed)
    columns, index = [], {}
    for label, (fn, steps, guidance) in runs.items():
        generator = torch.Generator().manual_seed(seed)
        result = fn(model, prompts, steps, guidance, generator, height=args.resolution, width=args.resolution)
        (out / label).mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(to_pil(result.images)):
            image.save(out / label / f"{i:03d}.png")
        columns.append(result.images)
        index[label] = {"steps": steps, "guidance": guidance, "timesteps": result.timesteps}
    grid = torch.stack(columns, dim=1).flatten(0, 1)  # rows: prompts, columns: runs
    save_grid(grid, out / "grid.png", ncols=len(columns))
    (out / "samples.json").write_text(json.dumps({"model": args.model, "seed": seed, "prompts": prompts,
                                                  "runs": index}, indent=2))
    print(f"{len(prompts)} prompts x {len(runs)} runs ({', '.join(runs)}) written to {out} (grid.png)")
