"""`rglcd export`: a student UNet + its teacher -> a stock diffusers LatentConsistencyModelPipeline directory."""
from __future__ import annotations

import argparse

from rglcd.config.args import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("export", help="write the student as a stock diffusers pipeline directory")
    parser.add_argument("--student", required=True, metavar="PATH",
                        help="student UNet: diffusers UNet dir, a dir with unet/, or a .safetensors state dict")
    parser.add_argument("--teacher", default=None, metavar="REF",
                        help="teacher ref: diffusers dir, tiny:<type>, s3:// URI or hub id (default: model.teacher)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output pipeline directory")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out directory")
    add_config_args(parser)
    parser.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> None:
    from rglcd.export import export_student
    from rglcd.models import load_teacher

    cfg = config_from_args(args)
    ref = args.teacher or cfg.model.teacher
    teacher = load_teacher(ref, cfg.model.cache_dir, cfg.model.revision)
    out = export_student(args.student, teacher, args.out, cfg=cfg, teacher_ref=ref, overwrite=args.overwrite)
    print(f"student exported to {out} (LatentConsistencyModelPipeline, safetensors; provenance in rglcd.json)")
