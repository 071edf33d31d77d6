"""`rglcd pretrain-lrm`: contrastively pretrain the latent reward model (docs/method.md 4.2)."""
from __future__ import annotations

import argparse
import json

from rglcd.cli._common import add_device_arg
from rglcd.config.args import add_config_args, config_from_args
from rglcd.devices import resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "pretrain-lrm", help="pretrain the latent reward model on (image, caption) data",
        description="Encode images with the teacher's VAE and train the LRM with the symmetric CLIP loss for "
                    "lrm.pretrain_steps steps of lrm.pretrain_batch_size; writes lrm_config.json + model.safetensors.")
    parser.add_argument("--data", required=True,
                        help="training data: an `rglcd prep` output dir (images or precomputed latents), .tar shards, "
                             "a table, a folder of images with same-named .txt captions, or builtin:photos")
    parser.add_argument("--out", required=True, help="output checkpoint directory (replaced atomically)")
    add_device_arg(parser)
    add_config_args(parser)
    parser.set_defaults(func=_pretrain)


def _pretrain(args: argparse.Namespace) -> None:
    from rglcd.lrm import pretrain_lrm_from_data

    cfg = config_from_args(args)
    result = pretrain_lrm_from_data(cfg, args.data, args.out, device=resolve_device(args.device))
    summary = {k: v for k, v in result.items() if k != "losses"}
    print(json.dumps(summary, indent=2))
