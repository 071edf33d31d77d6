"""`rglcd train`: the RG-LCD training program (rglcd.train.train); runs under `accelerate launch`/`torchrun` too."""
from __future__ import annotations

import argparse

from rglcd.config.args import add_config_args, config_from_args

EXIT_INTERRUPTED = 143  # 128 + SIGTERM: checkpointed and stopped; a retry resumes


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train", help="distil the teacher into an LCM student with reward guidance",
        description="Train on a prep output (or shards, a table, builtin:photos). Checkpoints go to "
                    "train.output_dir/checkpoints; the student is exported to train.output_dir/model. "
                    "Several processes: `accelerate launch -m rglcd train ...` or `torchrun -m rglcd train ...`.")
    add_config_args(parser)
    parser.add_argument("--data", default=None, help="training data (default: the config's data.train)")
    parser.add_argument("--lrm-checkpoint", default=None, help="pretrained LRM dir (reward.guidance=lrm)")
    parser.add_argument("--resume", default="auto",
                        help="auto (newest checkpoint in output_dir, if any), none, or a checkpoint dir")
    parser.add_argument("--output-dir", default=None, help="shortcut for --set train.output_dir=DIR")
    parser.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from rglcd.train import train

    if args.output_dir:
        args.overrides = [*args.overrides, f"train.output_dir={args.output_dir}"]
    cfg = config_from_args(args)
    result = train(cfg, args.data, lrm_checkpoint=args.lrm_checkpoint, resume=args.resume)
    if result.interrupted:
        print(f"train: interrupted at step {result.steps}; checkpoint {result.checkpoint}; rerun to resume")
        return EXIT_INTERRUPTED
    print(f"train: {result.steps} steps done in {result.output_dir}; model {result.model_dir}; "
          f"report {result.report}; skipped non-finite steps {result.bad_steps}")
    return 0
