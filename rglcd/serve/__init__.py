"""Serving the distilled student (docs/serving.md): `rglcd serve` on KServe's model server.

    server.serve(cfg, "models:/rglcd-student@production")   # or an exported directory

Modules: server (resolve the weights, start kserve.ModelServer), predictor (the kserve.Model: load, warm-up,
predict), protocol (KServe v1/v2 bodies <-> image requests), batcher (dynamic batching), metrics
(Prometheus), kserve_sdk (the SDK import). The request core (limits, seeded generation) is rglcd.generation.
"""
