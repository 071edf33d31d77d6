"""Roll a registered version out to the KServe InferenceService: a canary after registration (DAG step,
`serve.canary`), all traffic on promotion (`rglcd models promote --traffic`). docs/serving.md.

The object is read, changed by rglcd.serve.rollout and written back with its resourceVersion (a concurrent
writer makes the update fail with 409 and it is retried on the fresh object). Promotion moves the traffic
first, then the registry alias: a failed cluster update leaves both where they were.
"""

from typing import Any, NamedTuple

from kfp import dsl

from rglcd.config import PipelineConfig

_DEFAULTS = PipelineConfig()
GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"


class RolloutError(RuntimeError):
    """The InferenceService could not be read or updated; names it and what to check."""


def _explain(err: Any, what: str, cfg: Any) -> RolloutError:
    hint = {403: "the ServiceAccount needs get/update on inferenceservices (manifests/components/kserve rbac.yaml)",
            404: "apply an overlay with manifests/components/kserve first, or set serve.inference_service",
            422: "the API server refused the object (see the message)"}.get(err.status, err.reason)
    return RolloutError(f"{what} InferenceService {cfg.pipeline.namespace}/{cfg.serve.inference_service} failed "
                        f"({err.status}): {hint}; {err.body or ''}".rstrip("; "))


def rollout(api: Any, cfg: Any, version: int | str, percent: int | None) -> dict[str, Any]:
    """Serve `cfg.registry.model_name` version `version` with `percent` of the traffic (None: all)."""
    from kubernetes import client
    from kubernetes.client import ApiException

    from rglcd.serve.rollout import model_uri, traffic, with_model

    objects = client.CustomObjectsApi(api)
    where = (GROUP, VERSION, cfg.pipeline.namespace, PLURAL, cfg.serve.inference_service)
    conflicts = 0
    while True:
        try:
            current = objects.get_namespaced_custom_object(*where)
        except ApiException as err:
            raise _explain(err, "reading", cfg) from None
        body = with_model(current, model_uri(cfg.registry.model_name, version), percent)
        try:
            return traffic(objects.replace_namespaced_custom_object(*where, body))
        except ApiException as err:
            conflicts += err.status == 409                  # changed since we read it: read again (3 tries)
            if err.status != 409 or conflicts == 3:
                raise _explain(err, "updating", cfg) from None


def promote(api: Any, cfg: Any, version: int | str, alias: str = "production") -> dict[str, Any]:
    """All traffic to `version`, then the registry alias: both move, or neither."""
    from rglcd.registry import promote as move_alias

    served = rollout(api, cfg, version, None)
    info = move_alias(cfg, version, alias)
    return {**served, "version": info.version, "aliases": info.aliases}


@dsl.component(base_image=_DEFAULTS.cpu_image, install_kfp_package=False)
def canary_rollout(config_json: str, version: str) -> NamedTuple("Outputs", model=str, percent=int):
    """After registration: the new version takes `serve.canary_percent` of the InferenceService's traffic."""
    from collections import namedtuple

    from components.launcher.api import api_client
    from components.rollout import rollout
    from components.step_config import load_step_config

    cfg = load_step_config(config_json)
    served = rollout(api_client(), cfg, version, cfg.serve.canary_percent)
    print(f"canary: {served['model']} gets {served['percent']}% of {cfg.serve.inference_service}")
    return namedtuple("Outputs", ["model", "percent"])(served["model"], served["percent"])
