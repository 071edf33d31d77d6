"""The RG-LCD training program: accelerate loop, checkpoint/resume, metrics, report (docs/architecture.md 2.7)."""
from rglcd.train.checkpoint import TrainState, list_checkpoints
from rglcd.train.loop import NonFiniteLoss, train
from rglcd.train.outputs import TrainResult
from rglcd.train.resume import find_resume

__all__ = ["NonFiniteLoss", "TrainResult", "TrainState", "find_resume", "list_checkpoints", "train"]
