"""Image decoding and the training resolution transform (docs/method.md 2.1).

Transform: resize the shorter side to `resolution` (bilinear), crop a `resolution` square (random for
training, drawn from a generator the caller seeds; centred otherwise), scale to [-1, 1].
"""
from __future__ import annotations

import hashlib
import io

import numpy as np
import torch
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp")


class BadImage(ValueError):
    """Bytes that do not decode to an image."""


def image_from_bytes(data: bytes) -> Image.Image:
    """Encoded bytes -> fully decoded RGB image (EXIF orientation applied); truncated or non-image bytes raise BadImage."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return ImageOps.exif_transpose(img).convert("RGB")  # camera photos stored rotated stand upright
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, DecompressionBombError, ...)
        raise BadImage(f"{type(err).__name__}: {err}") from None


def pixel_hash(image: Image.Image) -> str:
    """sha256 of the decoded RGB pixels and size: equal for the same picture in any file format."""
    rgb = image.convert("RGB")
    return hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()


def encode_image(image: Image.Image, fmt: str = "png") -> bytes:
    """PIL image -> PNG (lossless, default) or JPEG (quality 95) bytes."""
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG")
    else:
        image.convert("RGB").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def crop_box(size: tuple[int, int], resolution: int, generator: np.random.Generator | None) -> tuple[int, int]:
    """(top, left) of the square crop in an image already resized to shorter side = resolution."""
    w, h = size
    if generator is None:
        return (h - resolution) // 2, (w - resolution) // 2
    return int(generator.integers(0, h - resolution + 1)), int(generator.integers(0, w - resolution + 1))


def to_training_tensor(image: Image.Image, resolution: int,
                       generator: np.random.Generator | None = None) -> torch.Tensor:
    """RGB image -> (3, resolution, resolution) float32 in [-1, 1]; random crop when a generator is given."""
    import torchvision.transforms.functional as TF
    from torchvision.transforms import InterpolationMode

    image = TF.resize(image.convert("RGB"), resolution, interpolation=InterpolationMode.BILINEAR)
    top, left = crop_box(image.size, resolution, generator)
    image = TF.crop(image, top, left, resolution, resolution)
    pixels = TF.pil_to_tensor(image)                                             # (3, H, W) uint8
    return pixels.float() / 127.5 - 1.0
