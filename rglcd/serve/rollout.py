"""What a rollout changes in the KServe InferenceService (docs/serving.md "Canary and promotion").

Pure functions on the object as the API server returns it; components/rollout.py reads it, applies these
and writes it back. A canary gives the predictor a pinned version (`--model models:/NAME/VERSION`, so the
new Knative revision is reproducible) and `canaryTrafficPercent`: KServe sends that share to the new
revision and the rest to the last fully rolled-out one. Promotion sets the same version with all traffic
(the field removed). Upstream: kserve pkg/apis/serving/v1beta1/component.go (`CanaryTrafficPercent`).
"""
from __future__ import annotations

import copy
from typing import Any

CONTAINER = "kserve-container"


def model_uri(name: str, version: int | str) -> str:
    return f"models:/{name}/{int(version)}"


def _container(isvc: dict[str, Any]) -> dict[str, Any]:
    containers = (isvc.get("spec", {}).get("predictor") or {}).get("containers") or []
    named = [c for c in containers if c.get("name") == CONTAINER] or containers[:1]
    if not named or "--model" not in (named[0].get("args") or []):
        name = isvc.get("metadata", {}).get("name")
        raise ValueError(f"InferenceService {name!r}: no predictor container with a '--model REF' argument "
                         "(manifests/components/kserve sets one); it is not an rglcd serving deployment")
    return named[0]


def served_model(isvc: dict[str, Any]) -> str:
    """The `--model` reference the predictor serves now."""
    args = _container(isvc)["args"]
    return args[args.index("--model") + 1]


def with_model(isvc: dict[str, Any], uri: str, canary_percent: int | None) -> dict[str, Any]:
    """A copy serving `uri`; `canary_percent` of the traffic to it (None: all of it)."""
    if canary_percent is not None and not 0 < canary_percent <= 100:
        raise ValueError(f"canary percent: {canary_percent} is out of range; allowed: 1..100")
    out = copy.deepcopy(isvc)
    args = _container(out)["args"]
    args[args.index("--model") + 1] = uri
    predictor = out["spec"]["predictor"]
    if canary_percent is None or canary_percent == 100:
        predictor.pop("canaryTrafficPercent", None)
    else:
        predictor["canaryTrafficPercent"] = canary_percent
    return out


def traffic(isvc: dict[str, Any]) -> dict[str, Any]:
    """What the spec asks for: the model and the percent of traffic it gets."""
    return {"model": served_model(isvc), "percent": isvc["spec"]["predictor"].get("canaryTrafficPercent", 100)}
