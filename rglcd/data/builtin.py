"""Built-in real data that needs no download (docs/method.md 11.3 and 11.4).

- `builtin:photos[:N]`: real photos shipped by scikit-image, scikit-learn and matplotlib, each with the
  caption its package documents (or a plain description where the package has none), expanded to N
  records (default 64) by deterministic random crops and horizontal flips. Record i < 11 is photo i
  uncropped; every later record is a crop drawn from a generator seeded with i.
- `builtin:vbench`: the 946 English prompts of VBench (`vbench/VBench_full_info.json`), read from the
  installed package's data file without importing vbench (whose imports are heavy).
"""
from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_PHOTO_RECORDS = 64
MIN_CROP_FRACTION = 0.55  # a crop keeps at least this fraction of the photo's shorter side

# (loader, caption). Captions are the packages' docstrings where they describe the content.
_PHOTOS = [
    ("skimage:astronaut", "Color image of the astronaut Eileen Collins."),
    ("skimage:chelsea", "Chelsea the cat."),
    ("skimage:coffee", "Coffee cup."),
    ("skimage:rocket", "Launch photo of DSCOVR on Falcon 9 by SpaceX."),
    ("skimage:stereo_motorcycle", "A red motorcycle parked in a garage."),
    ("skimage:hubble_deep_field", "Hubble eXtreme Deep Field."),
    ("skimage:retina", "Human retina."),
    ("skimage:immunohistochemistry", "Immunohistochemical (IHC) staining with hematoxylin counterstaining."),
    ("sklearn:china.jpg", "A Chinese pagoda above a lake, surrounded by trees."),
    ("sklearn:flower.jpg", "An orange dahlia flower in front of dark green leaves."),
    ("matplotlib:grace_hopper.jpg", "Portrait of Rear Admiral Grace Hopper in uniform."),
]


def _load_photo(ref: str) -> Image.Image:
    origin, name = ref.split(":", 1)
    if origin == "skimage":
        import skimage.data

        array = getattr(skimage.data, name)()
        array = array[0] if name == "stereo_motorcycle" else array  # (left, right, disparity)
        return Image.fromarray(np.ascontiguousarray(array)).convert("RGB")
    if origin == "sklearn":
        import sklearn.datasets

        folder = Path(sklearn.datasets.__file__).parent / "images"
        return Image.open(folder / name).convert("RGB")
    import matplotlib.cbook

    with matplotlib.cbook.get_sample_data(name) as handle:
        return Image.open(handle).convert("RGB")


@lru_cache(maxsize=1)
def photos() -> tuple[tuple[Image.Image, str], ...]:
    """The 11 real photos (RGB PIL images) with their captions."""
    return tuple((_load_photo(ref), caption) for ref, caption in _PHOTOS)


def photo_record(i: int) -> tuple[Image.Image, str]:
    """Record i of `builtin:photos`: photo i (i < 11) or a seeded random crop/flip of photo i mod 11."""
    base = photos()
    image, caption = base[i % len(base)]
    if i < len(base):
        return image.copy(), caption
    rng = np.random.default_rng([i, 0x5EED])
    w, h = image.size
    side = int(min(w, h) * rng.uniform(MIN_CROP_FRACTION, 1.0))
    left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    crop = image.crop((left, top, left + side, top + side))
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return crop, caption


def parse_photos_spec(spec: str) -> int:
    """'builtin:photos' -> 64 records; 'builtin:photos:N' -> N records (N >= 1)."""
    parts = spec.split(":")
    if parts[:2] != ["builtin", "photos"] or len(parts) > 3:
        raise ValueError(f"data source {spec!r} is not allowed; allowed: builtin:photos or builtin:photos:N")
    if len(parts) == 2:
        return DEFAULT_PHOTO_RECORDS
    if not parts[2].isdigit() or int(parts[2]) < 1:
        raise ValueError(f"data source {spec!r}: N must be a positive integer (e.g. builtin:photos:200)")
    return int(parts[2])


def vbench_prompts(dimensions: set[str] | None = None) -> list[str]:
    """VBench's English prompts in file order, de-duplicated; optionally only those of some dimensions."""
    spec = importlib.util.find_spec("vbench")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("builtin:vbench needs the vbench package's data file: "
                                "pip install --no-deps vbench==0.1.5")
    path = Path(list(spec.submodule_search_locations)[0]) / "VBench_full_info.json"
    entries = json.loads(path.read_text())
    chosen = [e["prompt_en"] for e in entries if dimensions is None or dimensions & set(e["dimension"])]
    return list(dict.fromkeys(p.strip() for p in chosen if p.strip()))
