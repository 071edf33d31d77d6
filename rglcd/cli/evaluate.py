"""`rglcd evaluate --model DIR [--teacher REF] --out DIR`: FID, rewards, CLIP score, latency, HF monitor, gate."""
from __future__ import annotations

import argparse
from dataclasses import asdict

from rglcd.cli._common import add_device_arg, add_json_arg, emit, read_mapping_file
from rglcd.config.args import add_config_args, config_from_args


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="evaluate an exported student against its teacher and apply the gate")
    parser.add_argument("--model", required=True, metavar="DIR", help="exported student directory (rglcd export)")
    parser.add_argument("--teacher", metavar="REF", help="teacher reference (default: model.teacher of the config)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (metrics.json, report.html, images)")
    parser.add_argument("--production-metrics", metavar="FILE",
                        help="metrics.json (or flat JSON of numbers) of the production model, for the FID rule")
    parser.add_argument("--strict", action="store_true", help="exit with status 3 when the gate fails")
    add_device_arg(parser, default=None, help="torch device: auto, cpu, cuda or cuda:N; sets eval.device "
                   "(default: the config's eval.device, itself auto unless set)")
    add_json_arg(parser)
    add_config_args(parser)
    parser.set_defaults(func=_evaluate)


def _production(path: str | None) -> dict | None:
    return None if path is None else read_mapping_file(path, "--production-metrics")


def _evaluate(args: argparse.Namespace) -> int:
    from rglcd.evaluate import evaluate

    if args.device is not None:
        args.overrides = [*args.overrides, f"eval.device={args.device}"]
    cfg = config_from_args(args)
    result = evaluate(cfg, args.model, args.out, teacher=args.teacher, production_metrics=_production(args.production_metrics))
    data = {"summary": result.metrics["summary"], "gate": asdict(result.gate),
            "metrics": str(result.metrics_path), "report": str(result.html_path)}
    emit(args, data, lambda: _text(result))
    return 3 if args.strict and not result.gate.passed else 0


def _text(result) -> str:
    lines = [f"{key:<32} {value:.6g}" if isinstance(value, float) else f"{key:<32} {value}"
             for key, value in result.metrics["summary"].items()]
    lines.append(f"gate: {'PASSED' if result.gate.passed else 'FAILED'} (reward: {result.gate.reward})")
    lines += [f"  {rule}: {reason}" for rule, reason in result.gate.reasons.items()]
    return "\n".join(lines + [f"metrics: {result.metrics_path}", f"report:  {result.html_path}"])
