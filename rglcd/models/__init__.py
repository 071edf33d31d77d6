"""Teacher loading, student construction and the tiny offline factory (docs/architecture.md 2.2)."""
from rglcd.models.sources import ModelSourceError, resolve
from rglcd.models.student import ema_update, make_student, make_target
from rglcd.models.teacher import Teacher, load_teacher, vae_scale_factor
from rglcd.models.tiny import build_tiny_pipeline, save_tiny_teacher
from rglcd.models.tokenizer import write_clip_tokenizer

__all__ = ["ModelSourceError", "Teacher", "build_tiny_pipeline", "ema_update", "load_teacher", "make_student",
           "make_target", "resolve", "save_tiny_teacher", "vae_scale_factor", "write_clip_tokenizer"]
