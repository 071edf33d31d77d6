"""rglcd: Reward Guided Latent Consistency Distillation (arXiv 2403.11027) as an MLOps workflow."""

__version__ = "0.1.0"
