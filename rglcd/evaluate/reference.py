"""FID reference sets: a folder of images, or `builtin:photos[:N]` (the real photos installed packages ship).

`builtin:photos[:N]` is for CPU runs and tests (docs/method.md 11.4): the first N records of
`rglcd.data.builtin` (11 real photos, then seeded crops of them), written once as PNG into the cache.
Real evaluations point `eval.fid_reference` at a folder of reference images (e.g. COCO-2014 val).
"""
from __future__ import annotations

import os
from pathlib import Path

from rglcd.fsutil import build_once
from rglcd.plugins import source_handler

_VERSION = "v1"  # bump when rglcd.data.builtin's records change: the folder name is the cache key


def write_builtin_photos(count: int, folder: str | Path) -> Path:
    """Records 0..count-1 of builtin:photos as 00000.png, 00001.png, ... in `folder`."""
    from rglcd.data.builtin import photo_record

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        photo_record(i)[0].save(folder / f"{i:05d}.png")
    return folder


def resolve_reference(spec: str, cache_dir: str | Path) -> Path:
    """`eval.fid_reference` -> a local folder of images (`builtin:photos[:N]` is written once into the cache;
    a registered scheme such as "toy:reference" resolves through `rglcd.plugins`)."""
    handler = source_handler("reference", spec)
    if handler is not None:
        try:
            return Path(handler(spec, cache_dir))
        except ValueError as err:
            raise ValueError(f"eval.fid_reference: {err}") from None
    if spec.startswith("builtin:"):
        from rglcd.data.builtin import parse_photos_spec

        try:
            count = parse_photos_spec(spec)
        except ValueError:
            raise ValueError(f"eval.fid_reference: {spec!r} is not allowed; allowed: a folder of reference "
                             "images, builtin:photos or builtin:photos:N") from None
        return build_once(Path(os.path.expanduser(str(cache_dir))) / "fid-reference",
                          f"builtin-photos-{count}-{_VERSION}", lambda tmp: write_builtin_photos(count, tmp))
    folder = Path(os.path.expanduser(spec))
    if not folder.is_dir():
        raise FileNotFoundError(f"eval.fid_reference: {spec!r} is not a directory; allowed: a folder of "
                                "reference images, builtin:photos or builtin:photos:N")
    return folder
