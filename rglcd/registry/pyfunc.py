"""The registered version as an MLflow Model: a pyfunc that turns prompts into images (docs/serving.md).

    mlflow.pyfunc.load_model("models:/rglcd-student@candidate").predict(
        pd.DataFrame({"prompt": ["a red fox"], "steps": [4], "seed": [0]}))    # -> prompt, seed, image (PNG b64)

Input columns (the signature): prompt (required), steps (1..serve.max_steps), guidance, seed, height, width;
one row is one image, generated with its own seeded noise (rglcd.generation), so a row equals
`rglcd sample --prompt P --seed S --steps N` pixel for pixel on the same device and dtype.

Weights: with `registry.model_weights: dvc` (default) the model's only artifact is the DVC pointer
(`artifacts/model.dvc`); `load_context` pulls that exact tree from the remote, hash-checked, into the weights
cache (rglcd.registry.weights), so the remote keeps the one copy. With `artifacts` the exported directory is
copied into the MLflow artifacts as well (a self-contained model for readers without access to the remote).

Written as a model from code (mlflow's "models from code": `pyfunc_entry.py` calls `set_model`), so loading
unpickles nothing. Upstream: mlflow/pyfunc/__init__.py (`save_model`, `python_model` as a file path,
`artifacts`, `model_config`), mlflow/pyfunc/model.py (`PythonModel`, `PythonModelContext`), mlflow/types/schema.py.
"""
from __future__ import annotations

import base64
import math
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
from mlflow.models import ModelSignature
from mlflow.types.schema import ColSpec, Schema

from rglcd.devices import device_and_dtype
from rglcd.generation import BadRequest, Limits, default_size, generate, parse_request, png_bytes
from rglcd.registry.weights import local_weights
from rglcd.storage import Pointer, pull

ENTRY = Path(__file__).with_name("pyfunc_entry.py")
POINTER_ARTIFACT, WEIGHTS_ARTIFACT = "pointer", "weights"
# Pinned in the model's requirements.txt (mlflow's environment for `mlflow models serve`, docker builds).
PINNED = ("rglcd", "mlflow", "torch", "diffusers", "transformers", "accelerate", "safetensors", "dvc", "dvc-s3",
          "pandas", "pillow")


def signature() -> ModelSignature:
    """Inputs: one row per image; outputs: the row's prompt and seed and the image as base64 PNG."""
    inputs = Schema([ColSpec("string", "prompt"), ColSpec("long", "steps", required=False),
                     ColSpec("double", "guidance", required=False), ColSpec("long", "seed", required=False),
                     ColSpec("long", "height", required=False), ColSpec("long", "width", required=False)])
    outputs = Schema([ColSpec("string", "prompt"), ColSpec("long", "seed"), ColSpec("string", "image")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example(cfg: Any) -> Any:
    import pandas as pd

    return pd.DataFrame({"prompt": ["a photograph of an astronaut riding a horse"],
                         "steps": [cfg.serve.default_steps], "guidance": [float(cfg.eval.guidance)], "seed": [0]})


def requirements() -> list[str]:
    """`name==version` for rglcd and the libraries it loads the model with (those installed here)."""
    pins = []
    for name in PINNED:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return pins


def _plain(value: Any) -> Any:
    value = value.item() if hasattr(value, "item") else value
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


class StudentModel(mlflow.pyfunc.PythonModel):
    """Prompts -> images with the distilled student (LCM sampling, rglcd.sample.lcm_sample)."""

    def load_context(self, context: Any) -> None:
        from rglcd.sample import load_sampling_model, prepare_sampling

        conf = dict(context.model_config or {})
        if WEIGHTS_ARTIFACT in context.artifacts:
            weights = Path(context.artifacts[WEIGHTS_ARTIFACT])
        else:
            weights = local_weights(context.artifacts[POINTER_ARTIFACT], conf.get("weights_cache"))
        device, dtype = device_and_dtype(conf.get("device", "auto"), conf.get("precision", "auto"))
        self.model = prepare_sampling(load_sampling_model(str(weights), device=device, dtype=dtype),
                                      conf.get("compile", "auto"))
        self.limits = Limits(**{k: conf[k] for k in Limits.__dataclass_fields__ if k in conf})
        self.batch_size = int(conf.get("max_batch_size", 8))

    def predict(self, context, model_input, params=None):   # no type hints: signature() is the schema
        import pandas as pd

        rows = [{k: _plain(v) for k, v in row.items() if _plain(v) is not None}
                for row in model_input.to_dict(orient="records")]
        size = default_size(self.model)
        requests = [r for row in rows for r in parse_request(row, self.limits, size)]
        if not requests:
            raise BadRequest("no rows: give at least one prompt")
        images = [im for i in range(0, len(requests), self.batch_size)           # bounded memory per call
                  for im in generate(self.model, requests[i:i + self.batch_size])]
        return pd.DataFrame({"prompt": [r.prompt for r in requests], "seed": [r.seed for r in requests],
                             "image": [base64.b64encode(png_bytes(im)).decode() for im in images]})


def model_config(cfg: Any) -> dict[str, Any]:
    """Load-time settings stored in the MLmodel; `mlflow.pyfunc.load_model(uri, model_config=...)` overrides."""
    s = cfg.serve
    return {"device": s.device, "precision": s.precision, "compile": s.compile, "max_steps": s.max_steps, "max_size": s.max_size,
            "max_images": s.max_images, "max_batch_size": s.max_batch_size, "default_steps": s.default_steps,
            "default_guidance": float(cfg.eval.guidance)}


def save_pyfunc(cfg: Any, pointer: Pointer, path: str | Path) -> Path:
    """Write the MLflow Model for `pointer`'s weights at `path` (a new directory)."""
    with tempfile.TemporaryDirectory() as tmp:
        pointer_file = Path(tmp) / f"{Path(pointer.path).name or 'model'}.dvc"
        pointer_file.write_text(pointer.dumps("yaml"))
        artifacts = {POINTER_ARTIFACT: str(pointer_file)}
        if cfg.registry.model_weights == "artifacts":
            artifacts[WEIGHTS_ARTIFACT] = str(pull(pointer, Path(tmp) / "weights").path)
        mlflow.pyfunc.save_model(str(path), python_model=str(ENTRY), artifacts=artifacts, signature=signature(),
                                 input_example=input_example(cfg), pip_requirements=requirements(),
                                 model_config=model_config(cfg),
                                 metadata={"dvc_md5": pointer.md5, "dvc_remote": pointer.remote,
                                           "weights": cfg.registry.model_weights})
    return Path(path)
