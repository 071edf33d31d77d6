"""KServe v1 and v2 (Open Inference Protocol) bodies <-> image requests (docs/serving.md 3).

v1  POST /v1/models/NAME:predict
    {"instances": [{"prompt": "a red fox", "steps": 4, "seed": 7, "num_images": 2}, "a blue car"]}
 -> {"predictions": [{"prompt": "a red fox", "seeds": [7, 8], "images": ["<base64 PNG>", ...]}, ...]}
v2  POST /v2/models/NAME/infer
    {"inputs": [{"name": "prompt", "datatype": "BYTES", "shape": [2], "data": ["a red fox", "a blue car"]},
                {"name": "steps", "datatype": "INT32", "shape": [1], "data": [4]}]}
 -> outputs "image" (BYTES, base64 PNG), "seed" (INT64), "prompt_index" (INT32), one element per image.
A v2 input other than prompt has one value per prompt or one value for all. Upstream: kserve's
protocol/infer_type.py (`InferRequest`, `InferOutput`, `InferResponse`) and rest/v1_endpoints.py.
"""
from __future__ import annotations

import base64
from typing import Any

from rglcd.generation import BadRequest, ImageRequest, Limits, check_total, parse_request

# The v2 model metadata (GET /v2/models/NAME): tensors in and out, -1 = one element per prompt/image.
_TYPES_IN = (("prompt", "BYTES"), ("steps", "INT32"), ("guidance", "FP32"), ("seed", "INT64"), ("height", "INT32"),
             ("width", "INT32"), ("num_images", "INT32"))
_TYPES_OUT = (("image", "BYTES"), ("seed", "INT64"), ("prompt_index", "INT32"))
V2_FIELDS = tuple(n for n, _ in _TYPES_IN)
V2_INPUTS = [{"name": n, "datatype": t, "shape": [-1]} for n, t in _TYPES_IN]
V2_OUTPUTS = [{"name": n, "datatype": t, "shape": [-1]} for n, t in _TYPES_OUT]


def v1_fields(body: Any) -> list[dict[str, Any]]:
    """The v1 body's instances as field mappings (a bare string is a prompt)."""
    if isinstance(body, (bytes, str)):
        raise BadRequest("the body is not JSON; send a JSON object with Content-Type: application/json")
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or not body["instances"]:
        raise BadRequest('expected {"instances": [...]} with at least one instance')
    out = []
    for i, inst in enumerate(body["instances"]):
        if isinstance(inst, str):
            inst = {"prompt": inst}
        if not isinstance(inst, dict):
            raise BadRequest(f"instances[{i}]: expected an object or a prompt string, got {type(inst).__name__}")
        out.append(inst)
    return out


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return value.decode() if isinstance(value, bytes) else value


def v2_fields(infer_request: Any) -> list[dict[str, Any]]:
    """The v2 request's tensors as one field mapping per prompt."""
    tensors = {}
    for tensor in infer_request.inputs:
        if tensor.name not in V2_FIELDS:
            raise BadRequest(f"input {tensor.name!r} is not known; allowed: {', '.join(V2_FIELDS)}")
        tensors[tensor.name] = [_plain(v) for v in tensor.as_numpy().reshape(-1)]
    prompts = tensors.pop("prompt", None)
    if not prompts:
        raise BadRequest('input "prompt" (BYTES, one element per prompt) is required')
    for name, values in tensors.items():
        if len(values) not in (1, len(prompts)):
            raise BadRequest(f"input {name!r} has {len(values)} elements; allowed: 1 or one per prompt "
                             f"({len(prompts)})")
    return [{"prompt": p, **{k: v[0] if len(v) == 1 else v[i] for k, v in tensors.items()}}
            for i, p in enumerate(prompts)]


def to_requests(fields: list[dict[str, Any]], limits: Limits, size: int) -> list[list[ImageRequest]]:
    """Per instance/prompt, its images; the whole call may hold at most `limits.max_images`."""
    grouped = []
    for i, f in enumerate(fields):
        try:
            grouped.append(parse_request(f, limits, size))
        except BadRequest as err:
            raise BadRequest(f"instance {i}: {err}") from None
    check_total([r for g in grouped for r in g], limits)
    return grouped


def b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def v1_response(grouped: list[list[ImageRequest]], pngs: list[bytes]) -> dict[str, Any]:
    predictions, it = [], iter(pngs)
    for group in grouped:
        predictions.append({"prompt": group[0].prompt, "seeds": [r.seed for r in group],
                            "images": [b64(next(it)) for _ in group]})
    return {"predictions": predictions}


def v2_response(grouped: list[list[ImageRequest]], pngs: list[bytes], model_name: str, request_id: str) -> Any:
    from rglcd.serve.kserve_sdk import InferOutput, InferResponse

    index = [i for i, group in enumerate(grouped) for _ in group]
    seeds = [r.seed for group in grouped for r in group]
    outputs = [InferOutput("image", [len(pngs)], "BYTES", [b64(p) for p in pngs]),
               InferOutput("seed", [len(seeds)], "INT64", seeds),
               InferOutput("prompt_index", [len(index)], "INT32", index)]
    return InferResponse(request_id, model_name, outputs)
