"""The registration gate: a pure function of the evaluation's plain numbers and `cfg.eval` thresholds
(docs/method.md 6.6).

Rules (each names itself in `failed_rules` when it fails):
- `reward_margin`:  student's eval.gate_reward (at eval.gate_steps) - the teacher's >= eval.gate_min_reward_margin;
                    reads the summary's `reward` and `teacher_reward`, whichever registered reward
                    eval.gate_reward names (HPSv2.1 by default, "toy" in the toy world)
- `fid_regression`: student FID - production FID <= eval.gate_max_fid_regression, only when a
                    production model's metrics are given; FIDs must come from the same protocol
                    (reference set hash and image count, where both record them) to be compared
- `hf_ratio`:       student/teacher high-frequency energy ratio <= eval.gate_max_hf_ratio
A number the rule needs but the metrics lack fails the rule: the gate never passes what it did not check.
The decision records the reward it compared (`reward`), so pages and logs can name it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

RULES = ("reward_margin", "fid_regression", "hf_ratio")


@dataclass
class GateDecision:
    passed: bool
    failed_rules: list[str] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # rule -> one line, for passed and failed rules
    reward: str = ""  # eval.gate_reward: the registered reward the reward_margin rule compared


def _number(summary: dict[str, Any], key: str) -> float | None:
    value = summary.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    """Plain numbers: `metrics["summary"]` of an evaluation, or a flat dict of them."""
    return metrics.get("summary", metrics) if isinstance(metrics, dict) else {}


def _reward_rule(s: dict, name: str, min_margin: float) -> tuple[bool, str]:
    student, teacher = _number(s, "reward"), _number(s, "teacher_reward")
    if student is None or teacher is None:
        return False, f"student or teacher {name} reward missing from the metrics (or not finite)"
    margin = student - teacher
    ok = margin >= min_margin
    return ok, (f"{name} {student:.4f} - teacher {teacher:.4f} = {margin:+.4f} {'>=' if ok else '<'} "
                f"{min_margin:+.4f}")


PROTOCOL_KEYS = ("fid_reference_key", "fid_num_images")  # reference set hash (48 bits) and image count


def _fid_protocol(summary: dict) -> tuple | None:
    """What makes two FIDs comparable, from the plain numbers (the registry keeps only those)."""
    values = tuple(_number(summary, k) for k in PROTOCOL_KEYS)
    return None if None in values else values


def _fid_rule(metrics: dict, production: dict | None, max_regression: float) -> tuple[bool, str]:
    if production is None:
        return True, "no production model to compare with"
    fid, prod = _number(_summary(metrics), "fid"), _number(_summary(production), "fid")
    if prod is None:
        return True, "production model has no FID to compare with"
    if fid is None:
        return False, f"production FID is {prod:.4f} but the candidate has no FID (set eval.fid_reference)"
    a, b = _fid_protocol(_summary(metrics)), _fid_protocol(_summary(production))
    if a is not None and b is not None and a != b:
        return False, f"FIDs not comparable: ({', '.join(PROTOCOL_KEYS)}) {a} vs production {b}"
    delta = fid - prod
    ok = delta <= max_regression
    return ok, f"FID {fid:.4f} - production {prod:.4f} = {delta:+.4f} {'<=' if ok else '>'} {max_regression:.4f}"


def _hf_rule(s: dict, max_ratio: float) -> tuple[bool, str]:
    ratio = _number(s, "hf_ratio")
    if ratio is None:
        return False, "high-frequency ratio missing from the metrics (or not finite)"
    ok = ratio <= max_ratio
    return ok, f"high-frequency ratio {ratio:.4f} {'<=' if ok else '>'} {max_ratio:.4f}"


def gate(metrics: dict[str, Any], eval_cfg: Any, production: dict[str, Any] | None = None) -> GateDecision:
    """Decide registration from the candidate's metrics, the `cfg.eval` thresholds and production's metrics."""
    s = _summary(metrics)
    results = {
        "reward_margin": _reward_rule(s, eval_cfg.gate_reward, eval_cfg.gate_min_reward_margin),
        "fid_regression": _fid_rule(metrics, production, eval_cfg.gate_max_fid_regression),
        "hf_ratio": _hf_rule(s, eval_cfg.gate_max_hf_ratio),
    }
    failed = [rule for rule, (ok, _) in results.items() if not ok]
    reasons = {rule: ("pass: " if ok else "FAIL: ") + text for rule, (ok, text) in results.items()}
    return GateDecision(passed=not failed, failed_rules=failed, reasons=reasons, reward=eval_cfg.gate_reward)
