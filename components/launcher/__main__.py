"""Command line of the training-job launcher (see components/launcher/__init__.py):

    python -m components.launcher --preset sd21-base-hpsv21 --set pipeline.distributed=pytorchjob \
        --set pipeline.num_nodes=4 --name rglcd-train-0001          # --dry-run prints the objects instead

Ctrl-C or SIGTERM while it waits deletes the job (the job never outlives its launcher).
"""
from __future__ import annotations

import argparse
import json
import sys

import yaml

from components.launcher.api import Cancelled, LaunchError, api_client, launch, run
from components.launcher.objects import build_config_map, build_job, job_kind
from rglcd.config import load_config


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m components.launcher",
                                     description="Run RG-LCD training as a PyTorchJob or TrainJob.")
    parser.add_argument("--preset", default="sd21-base-hpsv21", help="config preset (default: %(default)s)")
    parser.add_argument("--config", help="YAML/JSON config file applied over the preset")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="config override, applied last (repeatable)")
    parser.add_argument("--name", required=True, help="job name (RFC 1035 label)")
    parser.add_argument("--dry-run", action="store_true", help="print the job and its ConfigMap as YAML, create nothing")
    parser.add_argument("--no-wait", action="store_true", help="create the job and return")
    parser.add_argument("--timeout", type=float, help="give up after this many seconds "
                        "(default: pipeline.train_timeout + 600)")
    parser.add_argument("--unschedulable-timeout", type=float, default=600.0,
                        help="fail when pods stay unschedulable this long (default: %(default)s s)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: the launcher token, in-cluster, "
                                             "then ~/.kube/config)")
    parser.add_argument("train_args", nargs="*", help="extra arguments for `rglcd train` (after --)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        cfg = load_config(preset=args.preset, path=args.config, overrides=args.set)
        if args.dry_run:
            docs = [build_job(cfg, args.name, tuple(args.train_args)), build_config_map(cfg, args.name)]
            print(yaml.safe_dump_all(docs, sort_keys=False), end="")
            return 0
        api = api_client(args.kubeconfig)
        if args.no_wait:
            launch(api, cfg, args.name, tuple(args.train_args))
            print(f"created {job_kind(cfg).kind} {cfg.pipeline.namespace}/{args.name}")
            return 0
        result = run(cfg, args.name, api, tuple(args.train_args), timeout=args.timeout,
                     unschedulable_timeout=args.unschedulable_timeout)
    except Cancelled as err:
        print(f"launcher: {err}", file=sys.stderr)
        return 143
    except (LaunchError, ValueError) as err:
        print(f"launcher: error: {err}", file=sys.stderr)
        return 1
    print(json.dumps(result.__dict__, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
