"""`rglcd pipeline compile|run|submit|schedule`: the Kubeflow pipeline from the command line.

The `pipelines` package (kfp) is imported inside each command, never at module import: `rglcd/`
itself does not depend on kfp.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from rglcd.cli._common import add_json_arg, emit
from rglcd.config.args import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("pipeline", help="compile, run locally, submit or schedule the Kubeflow pipeline",
                            description="The RG-LCD DAG: prep -> LRM pretraining -> training -> evaluation -> "
                            "gated registration, as a Kubeflow Pipelines v2 pipeline.")
    cmds = parser.add_subparsers(dest="pipeline_command", metavar="ACTION", required=True)

    comp = cmds.add_parser("compile", help="write the compiled pipeline (KFP IR YAML or Kubernetes manifests)")
    add_config_args(comp)
    comp.add_argument("--out", default="rglcd-pipeline.yaml", help="output file (default: %(default)s)")
    comp.add_argument("--kubernetes-manifest", action="store_true",
                      help="emit Pipeline + PipelineVersion custom resources (KFP Kubernetes-native API, GitOps)")
    comp.add_argument("--namespace", help="namespace of the manifests (with --kubernetes-manifest)")
    comp.set_defaults(func=_compile)

    run = cmds.add_parser("run", help="run the whole DAG here with kfp.local (--local)")
    add_config_args(run)
    run.add_argument("--local", action="store_true", help="run every step on this machine (kfp.local subprocesses)")
    run.add_argument("--workdir", default="runs/pipeline",
                     help="pipeline root and checkpoints of local runs (default: %(default)s)")
    run.add_argument("--no-cache", action="store_true",
                     help="re-run every step (default: reuse cached config/prep/LRM-pretraining results of earlier "
                          "runs in --workdir; prep's cache key holds the data's version)")
    _force_arg(run)
    add_json_arg(run)
    run.set_defaults(func=_run)

    submit = cmds.add_parser("submit", help="start a run on a Kubeflow Pipelines cluster")
    _cluster_args(submit)
    submit.add_argument("--run-name", help="run name (default: rglcd-<preset>-<time>)")
    submit.add_argument("--no-wait", action="store_true", help="return once the run is created")
    submit.add_argument("--timeout", type=float, help="stop waiting after this many seconds")
    submit.add_argument("--poll", type=float, default=10.0, help="seconds between status polls (default: %(default)s)")
    add_json_arg(submit)
    submit.set_defaults(func=_submit)

    sched = cmds.add_parser("schedule", help="create a recurring run (6-field cron, seconds first)")
    _cluster_args(sched)
    sched.add_argument("--cron", required=True,
                       help="6-field cron 'second minute hour day-of-month month day-of-week', e.g. '0 0 3 * * *'")
    sched.add_argument("--name", help="recurring run name (default: rglcd-<preset>-retrain)")
    sched.add_argument("--max-concurrency", type=int, default=1, help="runs at once (default: %(default)s)")
    sched.add_argument("--catchup", action="store_true", help="backfill intervals missed while paused")
    add_json_arg(sched)
    sched.set_defaults(func=_schedule)


def _cluster_args(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser)
    parser.add_argument("--host", required=True, help="KFP API endpoint, e.g. http://ml-pipeline.kubeflow:8888")
    parser.add_argument("--experiment", help="experiment name (default: config pipeline.experiment)")
    parser.add_argument("--data", dest="data_uri", default="", help="data URI for this run (-> data.train)")
    parser.add_argument("--max-steps", type=int, default=0, help="training steps for this run (-> train.max_steps)")
    _force_arg(parser)


def _force_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--force", action="store_true",
                        help="train and register even when data.train is unchanged since the production model "
                             "(default: such a run ends after the data check, 'no new data')")


def _warn(text: str) -> None:
    print(text, file=sys.stderr)


def _compile(args: argparse.Namespace) -> None:
    from pipelines.compile import check_cluster_config, compile_pipeline

    cfg = config_from_args(args)
    for warning in check_cluster_config(cfg):
        _warn(f"warning: {warning}")
    out = compile_pipeline(cfg, args.out, kubernetes_manifest=args.kubernetes_manifest,
                           namespace=args.namespace)
    print(f"compiled pipeline ({cfg.preset}) -> {out}")


def _run(args: argparse.Namespace) -> None:
    if not args.local:
        raise ValueError("`rglcd pipeline run` runs on this machine only, with --local; "
                         "for a cluster use `rglcd pipeline submit --host URL`")
    from pipelines.local import run_local

    result = run_local(config_from_args(args), args.workdir, cache=not args.no_cache, force=args.force)
    emit(args, {"run_dir": str(result.run_dir), "tracking_uri": result.tracking_uri,
                "registered": result.registered, "skipped": result.skipped, "tasks": result.tasks}, result.summary)


def _submit(args: argparse.Namespace) -> int:
    from pipelines.submit import submit

    out = submit(config_from_args(args), args.host, run_name=args.run_name, experiment=args.experiment,
                 data_uri=args.data_uri, max_steps=args.max_steps, force=args.force, wait=not args.no_wait,
                 timeout=args.timeout, poll=args.poll)
    emit(args, asdict(out), None if out.state is None else f"run {out.run_id} finished: {out.state}")
    return 0 if out.state in (None, "SUCCEEDED") else 1


def _schedule(args: argparse.Namespace) -> None:
    from pipelines.submit import schedule

    out = schedule(config_from_args(args), args.host, args.cron, name=args.name, experiment=args.experiment,
                   data_uri=args.data_uri, max_steps=args.max_steps, force=args.force,
                   max_concurrency=args.max_concurrency, catchup=args.catchup)
    emit(args, asdict(out), None)   # the text line was logged by schedule()
