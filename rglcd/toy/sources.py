"""The toy world as the project's sources: the `tiny` preset's embedded default (docs/method.md 11.6).

References with the scheme "toy:" (registered in `rglcd.plugins.SOURCES`):
- `toy:teacher` (model.teacher): the world's trained teacher, a stock diffusers Stable Diffusion directory;
- `toy:lrm` (lrm.checkpoint): its contrastively pretrained latent reward model;
- `toy:world` (reward.weights, eval.reward_weights): the world directory the toy expert is read from;
- `toy:shapes[:N]` (data.train): the first N of the world's training images with their captions (all 4096);
- `toy:captions[:R]` (data.prompts, eval.prompts): the 48 captions, each R times (once), shuffled;
- `toy:reference[:N]` (eval.fid_reference): N held-out images of the world (all 1024), written once as PNG.

The world is the default `WorldConfig`, built once on the CPU under <model.cache_dir>/toy/world-<key>
(`rglcd.toy.world.ensure_world`; the key covers its config and code), so every step of a run, and every
later run on the machine, shares one build.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
from functools import lru_cache
from pathlib import Path
from typing import Iterator

from rglcd.fsutil import build_once
from rglcd.toy.config import ToyConfig, WorldConfig, method_config, world_code_digest
from rglcd.toy.data import ToyData, make_dataset, prompt_set

MODEL_PARTS = {"teacher": "teacher", "lrm": "lrm", "world": ""}   # toy:<part> -> its folder in the world


def _count(spec: str, name: str, most: int, default: int | None = None) -> int:
    """'toy:<name>' -> default (most), 'toy:<name>:N' -> N (1 <= N <= most); anything else is refused."""
    parts = spec.split(":")
    allowed = f"toy:{name} or toy:{name}:N with 1 <= N <= {most}"
    if parts[:2] != ["toy", name] or len(parts) > 3 or len(parts) == 3 and not (
            parts[2].isdigit() and 1 <= int(parts[2]) <= most):
        raise ValueError(f"{spec!r} is not allowed; allowed: {allowed}")
    return int(parts[2]) if len(parts) == 3 else most if default is None else default


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever `sys.stderr` is when a record comes, not the stream it was made with
    (so a caller that swaps stderr, e.g. `--json` or a test, never gets a write to a closed stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def progress_to_stderr() -> None:
    """The toy world's progress lines (loggers under rglcd.toy) on stderr, once: not also through the root
    logger (a KFP step's executor configures one); the root logger itself is left alone."""
    logger = logging.getLogger("rglcd.toy")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    if not any(isinstance(h, _CurrentStderr) for h in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)


def world_dir(cache_dir: str | Path) -> Path:
    """The default world's directory under <cache_dir>/toy, built first if missing (minutes, once; its
    progress goes to stderr, as the first pipeline step that needs it would otherwise sit silent)."""
    from rglcd.toy.world import ensure_world, world_path

    cfg, root = WorldConfig(), Path(os.path.expanduser(str(cache_dir))) / "toy"
    if not (world_path(cfg, root) / "world.json").is_file():
        progress_to_stderr()
        logging.getLogger("rglcd.toy").info("rglcd: training the toy world once into %s (about 10 minutes on "
                                            "2 CPU cores; every later run reuses it)", world_path(cfg, root))
    return ensure_world(cfg, root, "cpu", method_config(ToyConfig()))


def model_dir(ref: str, cache_dir: str) -> Path:
    """`toy:teacher`, `toy:lrm` or `toy:world` -> its local directory (a model source, `rglcd.models.sources`)."""
    part = ref.partition(":")[2]
    if part not in MODEL_PARTS:
        raise ValueError(f"{ref!r} is not allowed; allowed: {', '.join('toy:' + p for p in MODEL_PARTS)}")
    return world_dir(cache_dir) / MODEL_PARTS[part]


# ---------------------------------------------------------------- data

@lru_cache(maxsize=2)
def _rendered(which: str) -> ToyData:
    """The world's training ("shapes") or held-out ("reference") set, rendered from its seed (seconds)."""
    w = WorldConfig()
    return make_dataset(w.train_images, w.seed) if which == "shapes" else make_dataset(w.reference_images, w.seed + 1)


def _pil(image):
    """(3, H, W) float in [0, 1] -> an RGB PIL image (8 bits, as any image file holds)."""
    from PIL import Image

    return Image.fromarray((image.permute(1, 2, 0) * 255).round().byte().numpy(), "RGB")


class ShapesSource:
    """`toy:shapes[:N]` as a record source (`rglcd.data.sources.Source`): one unit of N records, random access."""

    latents, random_access = False, True

    def __init__(self, spec: str):
        self.n, self.name = _count(spec, "shapes", WorldConfig().train_images), spec

    def num_units(self) -> int:
        return 1

    def unit_counts(self) -> list[int]:
        return [self.n]

    def read_unit(self, unit: int, skip: int = 0, on_error=None) -> Iterator:
        for j in range(skip, self.n):
            yield self.read_record(unit, j)

    def read_record(self, unit: int, j: int):
        from rglcd.data.sources import Record

        data = _rendered("shapes")
        return Record(j, data.captions[j], _pil(data.images[j]), key=f"{self.name} #{j}")


def data_source(spec: str) -> ShapesSource:
    return ShapesSource(spec)


def data_version(spec: str) -> str:
    """sha256 hex of what `toy:shapes[:N]` holds: the count, the world's data settings and the renderer's code."""
    w, n = WorldConfig(), _count(spec, "shapes", WorldConfig().train_images)
    text = f"toy-shapes {n} {w.train_images} {w.seed} {world_code_digest()}"
    return hashlib.sha256(text.encode()).hexdigest()


def prompts(spec: str) -> list[str]:
    """`toy:captions[:R]`: every caption of the world R times (48 x R prompts), in a fixed shuffled order, so
    the first few (a page's sample grid, a validation grid) already differ in colour, shape and position."""
    import torch

    captions = prompt_set(_count(spec, "captions", 100, default=1))
    order = torch.randperm(len(captions), generator=torch.Generator().manual_seed(0)).tolist()
    return [captions[i] for i in order]


def reference_dir(spec: str, cache_dir: str | Path) -> Path:
    """`toy:reference[:N]` -> a folder of N held-out PNGs under <cache_dir>/fid-reference, written once."""
    n = _count(spec, "reference", WorldConfig().reference_images)
    key = f"toy-reference-{n}-{WorldConfig().key()}"

    def write(tmp: Path) -> None:
        data = _rendered("reference")
        for i in range(n):
            _pil(data.images[i]).save(tmp / f"{i:05d}.png")

    return build_once(Path(os.path.expanduser(str(cache_dir))) / "fid-reference", key, write)
