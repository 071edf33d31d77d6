"""Model registration (docs/architecture.md 2.11): MLflow Model Registry versions pointing at DVC-versioned weights.

    info = register(cfg, pointer, metrics, config_dict, data_version)   # idempotent per run key
    promote(cfg, info.version, alias="production")
    production_metrics(cfg)            # the evaluation gate's baseline, or None
    publish(cfg, "runs/latest/student", metrics, config_dict, data_version)   # push -> verify -> register
"""
from rglcd.registry.mlflow_registry import (ModelVersionInfo, RegistryError, get_version, list_versions,
                                            production_metrics, promote, register)
from rglcd.registry.publish import Published, publish

__all__ = ["ModelVersionInfo", "RegistryError", "register", "list_versions", "promote", "get_version",
           "production_metrics", "publish", "Published"]
