"""Evaluation and the registration gate (docs/method.md 6; docs/architecture.md 2.9).

    result = evaluate(cfg, model_dir, out_dir, teacher=None, production_metrics=None)
    result.metrics["summary"]   # plain numbers: reward, teacher_reward, reward_margin (of eval.gate_reward),
                                # fid, hf_ratio, speedup_<n>, hps/teacher_hps/hps_margin when HPSv2.1 is scored ...
    result.metrics_path, result.html_path, result.gate  # metrics.json, report.html, GateDecision (.reward: its name)

Pieces usable on their own: `compute_fid` (clean-fid, cached reference statistics), `high_frequency_share`
(reward-hacking monitor), `gate` (pure), `latency_report`, `benchmark_prompts`, `load_clip_scorer`.
"""
from rglcd.evaluate.core import EvalResult, evaluate
from rglcd.evaluate.fid import FIDError, compute_fid, resolve_inception
from rglcd.evaluate.gate import GateDecision, gate
from rglcd.evaluate.latency import latency_report
from rglcd.evaluate.spectrum import high_frequency_ratio, high_frequency_share

__all__ = ["EvalResult", "FIDError", "GateDecision", "compute_fid", "evaluate", "gate", "high_frequency_ratio",
           "high_frequency_share", "latency_report", "resolve_inception"]
