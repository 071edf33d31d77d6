"""`rglcd models tiny`, and the registry's `models list|promote` (rglcd/cli/registry.py)."""
from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("models", help="build tiny offline models; list and promote registered versions")
    cmds = parser.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    tiny = cmds.add_parser("tiny", help="save a tiny random-init Stable Diffusion (diffusers layout) to --out")
    tiny.add_argument("--out", required=True, help="output directory")
    tiny.add_argument("--prediction-type", choices=["epsilon", "v_prediction"], default="epsilon",
                      help="teacher parameterisation (default: %(default)s)")
    tiny.add_argument("--seed", type=int, default=0, help="init seed (default: %(default)s)")
    tiny.set_defaults(func=_tiny)
    from rglcd.cli.registry import add_models_actions

    add_models_actions(cmds)


def _tiny(args: argparse.Namespace) -> None:
    from rglcd.models import save_tiny_teacher

    path = save_tiny_teacher(args.out, args.prediction_type, args.seed)
    print(f"tiny {args.prediction_type} Stable Diffusion saved to {path}")
