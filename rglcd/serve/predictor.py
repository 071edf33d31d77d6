"""The student as a KServe model: load + warm-up, then v1/v2 requests through the dynamic batcher.

Upstream: kserve/model.py (`Model.load`, `predict`, `ready`; v1 bodies arrive as dicts, v2 as
`InferRequest`), kserve/errors.py (`InvalidInput` -> HTTP 400).
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from rglcd.devices import device_and_dtype
from rglcd.generation import BadRequest, ImageRequest, Limits, default_size, generate, png_bytes
from rglcd.serve import metrics
from rglcd.serve.batcher import Batcher
from rglcd.serve.kserve_sdk import InferRequest, InvalidInput, Model
from rglcd.serve.protocol import (V2_INPUTS, V2_OUTPUTS, to_requests, v1_fields, v1_response, v2_fields,
                                  v2_response)


class StudentPredictor(Model):
    def __init__(self, name: str, weights: Path, cfg: Any):
        super().__init__(name)
        self.weights, self.cfg = weights, cfg
        self.limits = Limits.from_config(cfg)
        self.model = self.batcher = None
        self.size = 0

    def load(self) -> bool:
        """Load the weights on the serving device, warm up (one generation), then report ready."""
        from rglcd.sample import load_sampling_model, prepare_sampling

        device, dtype = device_and_dtype(self.cfg.serve.device, self.cfg.serve.precision, "serve")
        self.model = prepare_sampling(load_sampling_model(str(self.weights), device=device, dtype=dtype),
                                      self.cfg.serve.compile)
        if not self.model.is_lcm:
            raise ValueError(f"--model {str(self.weights)!r}: its UNet has no guidance embedding; serve an exported "
                             "student (rglcd export / train), not a teacher")
        self.size = default_size(self.model)
        if self.cfg.serve.warmup:
            self.generate_pngs([ImageRequest("warm-up", self.limits.default_steps, self.limits.default_guidance, 0,
                                             self.size, self.size)])
        self.batcher = Batcher(self.generate_pngs, self.cfg.serve.max_batch_size, self.cfg.serve.max_wait_ms / 1000,
                               on_batch=metrics.record_batch)
        self.ready = True
        return self.ready

    def generate_pngs(self, requests: list[ImageRequest]) -> list[bytes]:
        """Runs in the batcher's worker thread: images, then PNG bytes."""
        return [png_bytes(image) for image in generate(self.model, requests)]

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
        started, v2 = time.perf_counter(), isinstance(payload, InferRequest)
        protocol, status = ("v2" if v2 else "v1"), "error"
        try:
            fields = v2_fields(payload) if v2 else v1_fields(payload)
            grouped = to_requests(fields, self.limits, self.size)
            pngs = await self.batcher.submit([r for group in grouped for r in group])
            status = "ok"
        except BadRequest as err:
            status = "bad_request"
            raise InvalidInput(str(err)) from None
        finally:
            metrics.REQUEST_LATENCY.labels(protocol, status).observe(time.perf_counter() - started)
        if v2:
            return v2_response(grouped, pngs, self.name, payload.id or str(uuid.uuid4()))
        return v1_response(grouped, pngs)

    def get_input_types(self) -> list[dict]:
        return V2_INPUTS

    def get_output_types(self) -> list[dict]:
        return V2_OUTPUTS

    def stop(self) -> None:
        if self.batcher is not None:
            self.batcher.close()
        self.ready = False
