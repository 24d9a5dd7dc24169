"""Decoding any image file into a 3-channel uint8 array, safely.

PIL does the decoding; this module adds what ImageFolder lacks: every mode (grayscale, 16-bit,
CMYK, palette, RGBA) comes out as RGB, EXIF rotation is applied, decompression bombs are refused
before pixels are decoded, and every error names the file.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from thawline.errors import BadImageError

# Extensions listed by torchvision's ImageFolder, plus a few PIL reads as well.
IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif",
)  # fmt: skip


def decode_image(
    data: bytes, name: str, max_pixels: int, limit: str = "prepare.max_pixels"
) -> Image.Image:
    """Decode image bytes into an RGB PIL image.

    Args:
        data: The file's bytes (already read, so the content hash and the pixels agree).
        name: The file's path, for error messages.
        max_pixels: Larger images are refused before their pixels are decoded.
        limit: What sets ``max_pixels``, for the message (a served model has no params.yaml).

    Returns:
        An RGB image.

    Raises:
        BadImageError: Empty, truncated, not an image, or too large.
    """
    if not data:
        raise BadImageError(f"{name}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if width * height > max_pixels:
                raise BadImageError(
                    f"{name}: {width}x{height} pixels exceeds {limit}={max_pixels:,} "
                    "(possible decompression bomb)"
                )
            img.load()
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"{name}: refused as a decompression bomb ({err})") from None
    except UnidentifiedImageError:  # its message is the repr of our BytesIO: say what it means
        raise BadImageError(f"{name}: cannot decode image (not a format PIL reads)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadImageError(f"{name}: cannot decode image ({err})") from None
    return to_rgb(ImageOps.exif_transpose(img))


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB: 16-bit is rescaled, alpha is composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo or 1.0) * 255.0
        img = Image.fromarray(scaled.astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB")


def square_uint8(img: Image.Image | np.ndarray | torch.Tensor, size: int | None) -> torch.Tensor:
    """Resize the shorter side to ``size`` and centre-crop a square: a 3xSxS uint8 tensor.

    ``size=None`` keeps the image as it is (it must already be square).
    """
    if isinstance(img, Image.Image):
        tensor = TF.pil_to_tensor(img)
    elif isinstance(img, np.ndarray):
        tensor = torch.from_numpy(np.ascontiguousarray(img))
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    else:
        tensor = img
    if tensor.shape[0] == 1:
        tensor = tensor.expand(3, -1, -1)
    if size is None:
        return tensor.contiguous()
    if min(tensor.shape[-2:]) != size:
        tensor = TF.resize(tensor, [size], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return TF.center_crop(tensor, [size, size]).contiguous()


def is_image_file(path: Path) -> bool:
    """Whether the name looks like an image (content is checked when decoding)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS
