"""Config rules about untrusted or inconsistent values, run at load with the other cross-field rules.

- no value anywhere in the config holds a URL with credentials (scheme://user:password@host): configs
  are printed, recorded with runs, passed as pipeline parameters and cached by KFP (docs/threat-model.md 3.3);
- the evaluation gate's step count is one of the evaluated step counts, and its reward one of the evaluated
  rewards; the HPSv2 benchmark is scored only with HPSv2.1 among them;
- per-reward weights name rewards that are evaluated;
- the remote-image allow-list holds plain http(s)/s3 URL prefixes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator
from urllib.parse import urlsplit

from rglcd.config.fields import ConfigError
from rglcd.urls import has_credentials, redact_urls

HPS_REWARD = "hpsv2.1"  # the reward of the HPSv2 benchmark (eval.hps_benchmark)


def _strings(obj: Any, key: str) -> Iterator[tuple[str, str]]:
    """(dotted key, string) for every string in a config tree (fields, list items, dict keys and values)."""
    if dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            yield from _strings(getattr(obj, f.name), f"{key}.{f.name}" if key else f.name)
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _strings(item, f"{key}[{i}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _strings(k, f"{key} (key)")
            yield from _strings(v, f"{key}.{k}")
    elif isinstance(obj, str):
        yield key, obj


def check_no_credentials(cfg: Any) -> None:
    for key, value in _strings(cfg, ""):
        if has_credentials(value):
            raise ConfigError(
                f"{key}: {redact_urls(value)[:120]!r} embeds credentials (user[:password]@) in a URL; not allowed: "
                "configs are printed and recorded. Give them through the environment (AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY, MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, PGPASSWORD) or a "
                "Kubernetes Secret (pipeline.s3_secret)")


def check_eval(cfg: Any) -> None:
    e = cfg.eval
    if e.gate_steps not in e.steps:
        raise ConfigError(f"eval.gate_steps: {e.gate_steps} is not one of eval.steps {e.steps}; "
                          "allowed: one of eval.steps")
    if e.gate_reward not in e.rewards:
        raise ConfigError(f"eval.gate_reward: {e.gate_reward!r} is not one of eval.rewards {e.rewards}; allowed: "
                          "a reward of eval.rewards (or add it there): the gate compares its student and teacher means")
    if e.hps_benchmark is not None and HPS_REWARD not in e.rewards:
        raise ConfigError(f"eval.hps_benchmark: {e.hps_benchmark[:120]!r} needs {HPS_REWARD!r} in eval.rewards "
                          f"{e.rewards}; allowed: null (no benchmark) or add {HPS_REWARD!r} to eval.rewards")
    # Weights for hpsv2.1 may stay when it is not evaluated (a preset sets them once for every reward list).
    unknown = sorted(set(e.reward_weights) - set(e.rewards) - {HPS_REWARD})
    if unknown:
        raise ConfigError(f"eval.reward_weights: {[k[:40] for k in unknown][:5]} not in eval.rewards {e.rewards}; "
                          "allowed: weights for the rewards evaluated")


def check_remote_images(cfg: Any) -> None:
    for i, prefix in enumerate(cfg.data.remote_images):
        parts = urlsplit(prefix)
        if parts.scheme not in ("http", "https", "s3") or not parts.netloc:
            raise ConfigError(f"data.remote_images[{i}]: {prefix[:120]!r} is not allowed; allowed: an "
                              "http(s)://host[/path] or s3://bucket[/prefix] URL prefix")


def check_values(cfg: Any) -> None:
    """All of the above; raises ConfigError naming the key, the value and what is allowed."""
    check_no_credentials(cfg)
    check_eval(cfg)
    check_remote_images(cfg)


__all__ = ["check_values"]
