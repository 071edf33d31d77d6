"""`rglcd register` and the `rglcd models list|promote` actions: the MLflow Model Registry (registry.*)."""
from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rglcd.cli._common import add_json_arg, emit, read_mapping_file
from rglcd.config.args import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("register", help="register a model version (pointer to its weights, metrics, config)",
                            description="Register the weights behind --model-pointer (or push --model-dir first, "
                            "then register) with metrics, the resolved config (--config/--preset/--set), data "
                            "version, code revision, library versions and the KFP run id. Idempotent per run.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-pointer", metavar="FILE", help="pointer file written by `rglcd push`")
    source.add_argument("--model-dir", metavar="DIR", help="push this directory first (storage.*), then register")
    parser.add_argument("--metrics", metavar="FILE", required=True,
                        help="JSON/YAML mapping of metric name -> number (nested mappings join with '.')")
    parser.add_argument("--data-version", help="data id: a string (prep's content hash), or the dataset's pointer file (the id is read from its manifest in the remote; the pointer is recorded as where it is stored)")
    parser.add_argument("--run-id", help="KFP run id (default: $KFP_RUN_ID)")
    parser.add_argument("--training-run", metavar="MLFLOW_RUN_ID",
                        help="the MLflow run that trained the weights: it becomes the version's run (default: the "
                             "one in mlflow-run.json beside --model-dir, as `rglcd train` writes it, if any)")
    parser.add_argument("--out", metavar="FILE", help="also write the version info as JSON here")
    add_json_arg(parser)
    add_config_args(parser)
    parser.set_defaults(func=_register)


def add_models_actions(cmds: argparse._SubParsersAction) -> None:
    """`models list` and `models promote`, added to the `models` group of rglcd/cli/models.py."""
    ls = cmds.add_parser("list", help="registered versions with aliases, weights md5 and metrics")
    add_json_arg(ls)
    add_config_args(ls)
    ls.set_defaults(func=_list)
    promote = cmds.add_parser("promote", help="point an alias (default: production) at a version")
    promote.add_argument("version", metavar="VERSION", type=int, help="registered version number")
    promote.add_argument("--alias", default="production", help="alias to move (default: %(default)s)")
    promote.add_argument("--traffic", action="store_true",
                         help="also send all traffic of the KServe InferenceService serve.inference_service "
                              "(namespace pipeline.namespace) to this version, before moving the alias")
    promote.add_argument("--kubeconfig", help="with --traffic: kubeconfig (default: in-cluster, then ~/.kube/config)")
    add_config_args(promote)
    promote.set_defaults(func=_promote)


def read_metric_values(path: str) -> dict[str, float]:
    """Metrics file -> flat {name: number}; anything else is refused naming the file and key."""
    from rglcd.registry.provenance import flatten

    flat = flatten(read_mapping_file(path, "--metrics"))
    bad = {k: v for k, v in flat.items() if isinstance(v, bool) or not isinstance(v, (int, float))}
    if bad:
        key, value = next(iter(bad.items()))
        raise ValueError(f"metrics file {path!r}: {key!r} = {value!r} is not a number; allowed: numbers")
    return flat


def _data_version(text: str | None) -> Any:
    if text and Path(text).is_file():
        from rglcd.storage import read_pointer

        return read_pointer(text)
    return text


def _register(args: argparse.Namespace) -> None:
    from rglcd.config.fields import to_dict
    from rglcd.registry import publish, register as register_version

    cfg = config_from_args(args)
    metrics, data = read_metric_values(args.metrics), _data_version(args.data_version)
    training = args.training_run or (_training_run(Path(args.model_dir)) if args.model_dir else None)
    pushed = None
    if args.model_dir:
        published = publish(cfg, args.model_dir, metrics, to_dict(cfg), data, args.run_id, training_run=training)
        pushed, info = published.push.summary(), published.version
    else:
        info = register_version(cfg, args.model_pointer, metrics, to_dict(cfg), data, args.run_id,
                                training_run=training)
    if args.out:
        Path(args.out).write_text(json.dumps(_jsonable(info), indent=2))
    emit(args, {**_jsonable(info), "pushed": pushed}, "\n".join(filter(None, [pushed, info.summary()])))


def _training_run(model_dir: Path) -> str | None:
    """The MLflow run id `rglcd train` wrote to <train.output_dir>/mlflow-run.json (the export: <output_dir>/model)."""
    from rglcd.train.tracking import RUN_FILE

    file = model_dir.resolve().parent / RUN_FILE
    if not file.is_file():
        return None
    run_id = read_mapping_file(str(file), RUN_FILE).get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError(f"--model-dir: {str(file)!r} is not a run file written by `rglcd train`; "
                         "pass --training-run")
    return run_id


def _jsonable(info: Any) -> dict[str, Any]:
    data = asdict(info)
    data["pointer"] = info.pointer.to_dvc() if info.pointer else None
    return data


def _list(args: argparse.Namespace) -> None:
    from rglcd.registry import list_versions

    cfg = config_from_args(args)
    versions = list_versions(cfg)
    if args.json:
        emit(args, [_jsonable(v) for v in versions], None)
        return
    if not versions:
        print(f"no versions of {cfg.registry.model_name!r} registered")
        return
    print(f"{'VERSION':>7}  {'ALIASES':<22}  {'WEIGHTS (DVC md5)':<36}  METRICS")
    for v in versions:
        metrics = ", ".join(f"{k}={val:.4g}" for k, val in sorted(v.metrics.items()))
        md5 = v.pointer.md5 if v.pointer else "-"
        print(f"{v.version:>7}  {','.join(v.aliases) or '-':<22}  {md5:<36}  {metrics}")


def _promote(args: argparse.Namespace) -> None:
    from rglcd.registry import get_version, promote

    cfg = config_from_args(args)
    if args.traffic:    # the cluster side lives in components/ (kubernetes), imported only here
        from components.launcher.api import api_client
        from components.rollout import promote as promote_with_traffic

        done = promote_with_traffic(api_client(args.kubeconfig), cfg, args.version, args.alias)
        print(f"{cfg.serve.inference_service}: all traffic to {done['model']}")
    info = get_version(cfg, version=args.version) if args.traffic else promote(cfg, args.version, args.alias)
    print(f"{info.name} version {info.version} is now {args.alias!r} (aliases: {', '.join(info.aliases)})")
