"""`rglcd serve`: the student on KServe's Python model server (docs/serving.md).

    serve(cfg, "models:/rglcd-student@production")      # or an exported directory (rglcd export / train)

A registered version is reached through its DVC pointer (tags of the version, written by
`rglcd.registry.register`): the weights are pulled once, hash-checked, into the weights cache
($RGLCD_WEIGHTS_CACHE); nothing from the registry is unpickled or executed. The server (uvicorn under
kserve.ModelServer, REST only) answers KServe v1 and v2, /v2/health/live and /v2/health/ready, and
/metrics; SIGTERM stops accepting, lets in-flight requests finish (serve.grace_period_s), then exits.
Upstream: kserve/model_server.py (`ModelServer(http_port, enable_grpc, grace_period).start(models)`).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[\w.-]+)|/(?P<version>\d+))$")


def resolve_weights(cfg: Any, ref: str) -> tuple[Path, str]:
    """(local weights directory, description) for an exported directory or models:/NAME@ALIAS|/VERSION."""
    match = MODEL_URI.match(ref)
    if ref.startswith("models:/") and not match:
        raise ValueError(f"--model: {ref!r} is not a registry URI; allowed: models:/NAME@ALIAS or models:/NAME/VERSION")
    if match:
        from rglcd.registry import get_version
        from rglcd.registry.weights import local_weights

        reg = dataclasses.replace(cfg, registry=dataclasses.replace(cfg.registry, model_name=match["name"]))
        info = get_version(reg, version=match["version"], alias=match["alias"])
        if info is None:
            raise ValueError(f"--model: {match['name']!r} has no version with alias {match['alias']!r}")
        if info.pointer is None:
            raise ValueError(f"--model: {ref} (version {info.version}) has no DVC pointer; it was not registered "
                             "by rglcd")
        return local_weights(info.pointer), f"{info.name} version {info.version} ({info.pointer.md5})"
    path = Path(ref).expanduser()
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"--model: {ref!r} is neither models:/... nor an exported student directory "
                                "(model_index.json)")
    return path, str(path)


def build_predictor(cfg: Any, ref: str):
    """The loaded, warmed-up KServe model for `ref`."""
    from rglcd.serve.predictor import StudentPredictor

    weights, what = resolve_weights(cfg, ref)
    predictor = StudentPredictor(cfg.serve.model_name, weights, cfg)
    predictor.load()
    print(f"serving {what} as {cfg.serve.model_name!r} on port {cfg.serve.port}", flush=True)
    return predictor


def serve(cfg: Any, ref: str) -> None:
    """Load, warm up, serve until SIGTERM/SIGINT."""
    from rglcd.serve.kserve_sdk import ModelServer

    predictor = build_predictor(cfg, ref)
    ModelServer(http_port=cfg.serve.port, enable_grpc=False, grace_period=cfg.serve.grace_period_s,
                workers=1).start([predictor])
