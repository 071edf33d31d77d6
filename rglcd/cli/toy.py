"""`rglcd toy run [--quick]`: the CPU toy replication of the paper's claims (rglcd.toy); `rglcd toy report`
judges a finished run's claims again from its numbers."""
from __future__ import annotations

import argparse

from rglcd.cli._common import add_device_arg
from rglcd.devices import resolve_device


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("toy", help="toy-world replication of the paper's claims on CPU")
    cmds = parser.add_subparsers(dest="toy_command", metavar="ACTION", required=True)
    run = cmds.add_parser("run", help="build (or reuse) the toy world, run every experiment, write the table")
    run.add_argument("--quick", action="store_true", help="a seconds-to-a-minute version (numbers not meaningful)")
    run.add_argument("--out", default=None,
                     help="output directory (default: benchmarks/toy, or runs/toy-quick with --quick)")
    run.add_argument("--cache-dir", default="~/.cache/rglcd/toy", help="where the trained world is cached "
                     "(default: %(default)s)")
    # The published table (benchmarks/toy) is defined on CPU, so this one --device defaults to cpu, not auto.
    add_device_arg(run, default="cpu", help="torch device: auto, cpu, cuda or cuda:N (default: %(default)s, the "
                   "device the published table was made on)")
    run.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: %(default)s)")
    run.set_defaults(func=_run)
    report = cmds.add_parser("report", help="judge the claims of a finished run again from its results.json and "
                             "rewrite its RESULTS.md (no training; the numbers and samples.png are kept)")
    report.add_argument("--out", default="benchmarks/toy", help="the run's output directory (default: %(default)s)")
    report.set_defaults(func=_report)


def _run(args: argparse.Namespace) -> None:
    import torch

    from rglcd.toy import ToyConfig, quick_config, run_toy
    from rglcd.toy.sources import progress_to_stderr

    if args.threads < 1:
        raise ValueError(f"--threads: {args.threads} is not allowed; allowed: >= 1")
    torch.set_num_threads(args.threads)
    progress_to_stderr()
    toy = quick_config() if args.quick else ToyConfig()
    out = args.out or ("runs/toy-quick" if args.quick else "benchmarks/toy")
    run_toy(toy, out, args.cache_dir, str(resolve_device(args.device)), say=lambda msg: print(msg, flush=True))


def _report(args: argparse.Namespace) -> None:
    from rglcd.toy.report import rejudge

    results = rejudge(args.out)
    for claim in results["claims"]:
        print(f"{'reproduces' if claim['holds'] else 'does not reproduce'}: {claim['claim']}")
