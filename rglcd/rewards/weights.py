"""Where reward-model weights come from, and loading them safely.

A weights reference is a local file or directory, an `s3://` URI (a file or a prefix), or a hub
repository id; `None` means the RM's default hub source. Hub and S3 go through
`rglcd.models.sources.resolve`, so offline hub access fails fast with a message saying what to do.
Pickled checkpoints are only ever read with `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import torch

from rglcd.models.sources import ModelSourceError, resolve

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


class RewardWeightsError(RuntimeError):
    """Reward weights that are unreadable or do not fit; the message names the file and what is expected."""


class MissingRewardWeights(RewardWeightsError, FileNotFoundError):
    """Reward weights that are not there; the message names the file and where it comes from."""


def resolve_weight_file(ref: str | None, filename: str, hub_repo: str, cache_dir: str, what: str) -> Path:
    """A weights reference -> the local checkpoint file `filename` (or the file `ref` names)."""
    where = f"{what} weights come from the hub repository {hub_repo!r} (file {filename!r})"
    ref = ref or hub_repo
    is_file_ref = ref.lower().endswith(WEIGHT_SUFFIXES)
    try:
        if ref.startswith("s3://") and is_file_ref:
            parent, _, name = ref.rpartition("/")
            path = resolve(parent, cache_dir) / name
        elif is_file_ref:
            path = Path(os.path.expanduser(ref))
        else:
            path = resolve(ref, cache_dir, allow_patterns=[filename]) / filename
    except ModelSourceError as err:
        raise MissingRewardWeights(f"{err} ({where})") from None
    if not path.is_file():
        raise MissingRewardWeights(f"{what} weights not found: {path} does not exist. {where}; download it and "
                                 "pass its path (reward.weights=PATH), a directory holding it, or an s3:// URI.")
    return path


def _torch_load(path: Path):
    try:  # memory-mapped: a 4 GB ViT-H checkpoint is not copied into RAM before load_state_dict
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors or a pickled .pt/.bin (weights_only=True; {'state_dict': ...} unwrapped)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        obj = _torch_load(path)
    except pickle.UnpicklingError as err:
        found = re.search(r"GLOBAL (\S+)", str(err))
        if found is None:
            raise RewardWeightsError(f"{path}: not a readable torch checkpoint (unpickling failed)") from None
        raise RewardWeightsError(
            f"{path}: refused to load: it holds a Python object ({found.group(1)}), not only tensors and plain "
            "containers, and checkpoints are read with torch.load(weights_only=True) only") from None
    except (RuntimeError, EOFError, OSError) as err:
        raise RewardWeightsError(f"{path}: not a readable torch checkpoint ({str(err).splitlines()[0]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RewardWeightsError(f"{path}: expected a state dict (or {{'state_dict': ...}}) of tensors")
    if obj and all(k.startswith("module.") for k in obj):       # saved from a DDP wrapper
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_strict(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, arch: str) -> None:
    """load_state_dict(strict=True) with a message naming the file and the architecture on mismatch."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as err:
        first = str(err).split("\n\t")[:3]
        raise RewardWeightsError(f"{source} does not fit the {arch} architecture: {' '.join(first)}") from None
