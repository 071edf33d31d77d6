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
# The only decoders untrusted bytes reach, whatever their name says (no EPS/Ghostscript, TIFF, PSD, ...).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


class BadImage(ValueError):
    """Bytes that do not decode to an image."""


class ImageTooLarge(BadImage):
    """An image whose header declares more pixels than allowed (a decompression bomb, or just too big)."""


def pixel_limit(resolution: int, max_pixels: int | None = None) -> int:
    """Most pixels an image may have: `max_pixels` if set, else 64 x resolution^2 (8x the side), at least 4096^2.

    Training resizes the shorter side to `resolution`, so anything larger only costs memory: a 13000^2
    PNG of 0.5 MB on disk decodes to 0.5 GB of RGB pixels and several GB in PIL's conversions
    (docs/threat-model.md 3.4)."""
    return max_pixels if max_pixels is not None else max(64 * resolution * resolution, 4096 * 4096)


def image_from_bytes(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Encoded bytes -> fully decoded RGB image (EXIF orientation applied); truncated or non-image bytes raise
    BadImage, more than `max_pixels` pixels (read from the header, before decoding) ImageTooLarge."""
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:
            if max_pixels is not None and img.width * img.height > max_pixels:
                raise ImageTooLarge(f"{img.width}x{img.height} is more than the {max_pixels} pixels allowed")
            img.load()
            return ImageOps.exif_transpose(img).convert("RGB")  # camera photos stored rotated stand upright
    except ImageTooLarge:
        raise
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(str(err)[:200]) from None
    except Exception as err:  # PIL raises many types (OSError, SyntaxError, ValueError, ...)
        raise BadImage(f"{type(err).__name__}: {str(err)[:200]}") from None


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
