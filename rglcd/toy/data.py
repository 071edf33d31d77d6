"""The toy world's data: coloured shapes on grey backgrounds, captioned by colour, shape and position.

Every image is 32x32 RGB in [0, 1], rendered at 4x and box-filtered down (anti-aliased edges, so the
data itself has little high-frequency energy). A caption names all three attributes, e.g.
"a red circle on the left"; the background's grey level and gradient, the shape's size, exact place
and shade vary and are not named. Everything is generated from a seed: no files, no downloads.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

COLOURS = {"red": (0.90, 0.15, 0.15), "green": (0.15, 0.72, 0.20), "blue": (0.15, 0.30, 0.90),
           "yellow": (0.95, 0.85, 0.15)}
SHAPES = ("circle", "square", "triangle")
POSITIONS = {"left": (0.28, 0.50), "right": (0.72, 0.50), "top": (0.50, 0.28), "bottom": (0.50, 0.72)}
ATTRIBUTES = (tuple(COLOURS), SHAPES, tuple(POSITIONS))   # (colour, shape, position) class names
NUM_CLASSES = tuple(len(a) for a in ATTRIBUTES)           # (4, 3, 4)
RESOLUTION, SUPERSAMPLE = 32, 4
_WHERE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}
_CAPTION = re.compile(r"^a (\w+) (\w+) (on the left|on the right|at the top|at the bottom)$")


def caption(labels: tuple[int, int, int]) -> str:
    """(colour, shape, position) indices -> 'a red circle on the left'."""
    c, s, p = labels
    return f"a {ATTRIBUTES[0][c]} {SHAPES[s]} {_WHERE[ATTRIBUTES[2][p]]}"


def parse_caption(text: str) -> tuple[int, int, int]:
    """Inverse of `caption`; anything else is refused with the grammar it must follow."""
    m = _CAPTION.match(text.strip())
    where = {v: k for k, v in _WHERE.items()}
    if m is None or m.group(1) not in COLOURS or m.group(2) not in SHAPES:
        raise ValueError(f"toy caption {text!r} is not allowed; allowed: 'a <colour> <shape> <where>' with colour in "
                         f"{list(COLOURS)}, shape in {list(SHAPES)}, where in {list(_WHERE.values())}")
    return ATTRIBUTES[0].index(m.group(1)), SHAPES.index(m.group(2)), ATTRIBUTES[2].index(where[m.group(3)])


def all_labels() -> list[tuple[int, int, int]]:
    """Every (colour, shape, position) combination, in a fixed order (48 of them)."""
    return list(itertools.product(*(range(n) for n in NUM_CLASSES)))


def labels_of(captions: list[str]) -> torch.Tensor:
    """(B, 3) long attribute indices of toy captions."""
    return torch.tensor([parse_caption(c) for c in captions], dtype=torch.long)


@dataclass
class ToyData:
    images: torch.Tensor     # (N, 3, 32, 32) float32 in [0, 1]
    labels: torch.Tensor     # (N, 3) long: colour, shape, position
    captions: list[str]      # N captions

    def __len__(self) -> int:
        return self.images.shape[0]


def _masks(kind: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor, r: torch.Tensor, size: int) -> torch.Tensor:
    """(n, size, size) float masks of circles (0), squares (1) and upward triangles (2); coords in [0, 1]."""
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = grid[None, :, None], grid[None, None, :]                         # (1, S, 1), (1, 1, S)
    cx, cy, r = cx[:, None, None], cy[:, None, None], r[:, None, None]      # (n, 1, 1)
    circle = (x - cx).square() + (y - cy).square() <= r.square()
    square = ((x - cx).abs() <= 0.85 * r) & ((y - cy).abs() <= 0.85 * r)
    top, base = cy - r, cy + 0.8 * r                                        # apex and base line
    frac = ((y - top) / (base - top)).clamp(0, 1)                           # 0 at the apex, 1 at the base
    triangle = (y >= top) & (y <= base) & ((x - cx).abs() <= r * frac)
    k = kind[:, None, None]
    return torch.where(k == 0, circle, torch.where(k == 1, square, triangle)).float()


def render(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Images (n, 3, 32, 32) in [0, 1] for attribute labels (n, 3), with seeded nuisance variation."""
    n, size = labels.shape[0], RESOLUTION * SUPERSAMPLE
    u = torch.rand((n, 8), generator=generator)                             # all nuisance draws at once
    anchor = torch.tensor(list(POSITIONS.values()))[labels[:, 2]]           # (n, 2)
    cx, cy = anchor[:, 0] + 0.08 * (u[:, 0] - 0.5), anchor[:, 1] + 0.08 * (u[:, 1] - 0.5)
    r = 0.18 + 0.06 * u[:, 2]                                               # 5.8 to 7.7 px
    mask = _masks(labels[:, 1], cx, cy, r, size)[:, None]                   # (n, 1, S, S)
    colour = torch.tensor(list(COLOURS.values()))[labels[:, 0]]             # (n, 3)
    colour = (colour + 0.08 * (u[:, 3:4] - 0.5)).clamp(0, 1)[:, :, None, None]
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    angle = 2 * torch.pi * u[:, 4]
    ramp = torch.cos(angle)[:, None, None] * grid[None, None, :] + torch.sin(angle)[:, None, None] * grid[None, :, None]
    grey = 0.2 + 0.6 * u[:, 5, None, None] + 0.15 * u[:, 6, None, None] * ramp      # (n, S, S)
    background = grey[:, None].expand(n, 3, size, size)
    image = mask * colour + (1 - mask) * background                         # (n, 3, S, S)
    return F.avg_pool2d(image, SUPERSAMPLE).clamp(0, 1)                     # (n, 3, 32, 32)


def make_dataset(n: int, seed: int, chunk: int = 512) -> ToyData:
    """`n` images, every attribute combination equally often (n // 48 or one more), in a seeded order."""
    if n < 1:
        raise ValueError(f"toy data set size: {n} is not allowed; allowed: n >= 1")
    g = torch.Generator().manual_seed(seed)
    combos = torch.tensor(all_labels())                                     # (48, 3)
    labels = combos[torch.arange(n) % len(combos)][torch.randperm(n, generator=g)]  # (n, 3)
    images = torch.cat([render(part, g) for part in labels.split(chunk)])
    return ToyData(images, labels, [caption(tuple(row)) for row in labels.tolist()])


def prompt_set(repeats: int) -> list[str]:
    """Each of the 48 captions `repeats` times (the evaluation prompts)."""
    return [caption(lab) for _ in range(repeats) for lab in all_labels()]
