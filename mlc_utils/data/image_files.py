"""Reading image files: the one judge of whether an image decodes, and why not (no torch here).

Decoding goes by content, not by file name (a PNG named ``.jpg`` reads fine), and every mode
Pillow knows (greyscale, 16-bit, palette, CMYK, alpha) ends up RGB. A missing, truncated or
corrupt file, whatever Pillow raises for it, raises :class:`ImageReadError` naming the file, so one
bad image in 30 000 is found by name instead of as a worker crash; ``validate`` asks the same
function without loading torch.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np


class ImageReadError(OSError):
    """An image file cannot be opened or decoded; the message names the file, ``reason`` says why.

    Raised in a DataLoader worker, torch re-raises it in the main process as ``ImageReadError(msg)``
    with ``msg`` = "Caught ImageReadError in DataLoader worker process N." plus the worker's traceback;
    the constructor keeps only the original message, so a command still prints one line naming the file.
    """

    def __init__(self, message: str, reason: str | None = None):
        if message.startswith("Caught ImageReadError") and "ImageReadError: " in message:
            message = message.rsplit("ImageReadError: ", 1)[1].strip()
        super().__init__(message)
        self.reason = reason or message



def _to_rgb(image):
    from PIL import Image
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16/32-bit greyscale: rescale to 8 bit
        array = np.asarray(image, dtype=np.float64)
        top = array.max() or 1.0
        image = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image



def load_image(path: str | Path):
    """Decode ``path`` fully into an RGB PIL image (EXIF rotation applied).

    The one judge of an image file (``validate`` asks it too): whatever fails, in Pillow's decoders,
    the EXIF transpose or the RGB conversion, and whatever it raises (not only OSError: struct.error,
    TypeError, DecompressionBombError... on malformed files), becomes :class:`ImageReadError`.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError
    path = Path(path)

    def fail(reason: str):
        return ImageReadError(f"image {path}: {reason}", reason)

    if not path.is_file():
        raise fail("missing" if not path.exists() else "not a file")
    try:
        if path.stat().st_size == 0:
            raise fail("empty file (0 bytes)")
        with warnings.catch_warnings():
            # past MAX_IMAGE_PIXELS Pillow only warns (past twice that it raises): refuse both alike
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
                image = _to_rgb(ImageOps.exif_transpose(image))
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise fail("not an image Pillow can read (corrupt or another format)") from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise fail(f"too large to decode safely, a possible decompression bomb ({err})") from None
    except Exception as err:  # not BaseException: Ctrl-C still stops the run
        kind = type(err).__qualname__ if type(err).__module__ == "builtins" else \
            f"{type(err).__module__}.{type(err).__qualname__}"
        raise fail(f"cannot decode ({kind}: {err}); the file may be truncated or corrupt") from None
    if image.width < 1 or image.height < 1:
        raise fail(f"empty image ({image.width}x{image.height} pixels)")
    return image
