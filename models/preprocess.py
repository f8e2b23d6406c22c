"""Image decoding and preprocessing shared by enrolment, classification and training."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from models.backbones import PreprocessConfig

ALLOWED_FORMATS = frozenset({"PNG", "JPEG", "BMP", "TIFF", "WEBP"})


class ImageRejected(ValueError):
    """The bytes are not an acceptable image. `code` is machine-readable; the message
    never contains decoder output."""

    def __init__(self, code: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class DecodedImage:
    rgb: Image.Image
    width: int
    height: int
    format: str


def decode_image(data: bytes, max_pixels: int, draft_to: int | None = None,
                 grey: bool = False, max_bytes: int | None = None) -> DecodedImage:
    """Decode `data` into an upright RGB (or, with `grey`, 8-bit grey) image, checking
    format and pixel count from the header before any pixel is decoded. Multi-frame files
    use their first frame.

    `draft_to` lets a JPEG decode at a reduced DCT scale that still covers that size:
    the network sees the same squash-resized input at a fraction of the cost.
    `width`/`height` are always the file's own dimensions.

    Pillow's own bomb check backs ours (a warning above Image.MAX_IMAGE_PIXELS, an error
    above twice that); the service's `max_pixels` stays under it, so ours decides. No
    warnings filter is set here: `warnings.catch_warnings` swaps process-wide state and
    is not thread-safe, and images are decoded in several threads at once.

    `max_bytes` caps the decoded size (`decoded_bytes`: a 16-bit frame costs twice an 8-bit
    one), also checked from the header."""
    if not data:
        raise ImageRejected("empty_file", "the file is empty")
    try:
        img = Image.open(io.BytesIO(data), formats=sorted(ALLOWED_FORMATS))
        fmt = img.format or ""
        w, h = img.size
        if w < 1 or h < 1:
            raise ImageRejected("bad_dimensions", "the image has no pixels")
        if w * h > max_pixels:
            raise ImageRejected(
                "too_many_pixels",
                f"image is {w}x{h} = {w * h} pixels; the limit is {max_pixels}",
                status=413,
            )
        if max_bytes is not None and decoded_bytes(img) > max_bytes:
            raise ImageRejected(
                "too_many_bytes",
                f"image decodes to {decoded_bytes(img)} bytes ({w}x{h} {img.mode}); the "
                f"limit is {max_bytes}", status=413)
        img.seek(0)
        if draft_to and fmt == "JPEG":
            # A grey draft decodes only the luma plane: no chroma work at all.
            mode = "L" if grey else (img.mode if img.mode in ("L", "RGB") else "RGB")
            img.draft(mode, (draft_to, draft_to))
        img.load()
        upright: Image.Image = img
        if img.getexif().get(0x0112, 1) not in (1, None):  # transpose only if needed
            upright = ImageOps.exif_transpose(img) or img
        rgb = to_rgb(upright)
        if grey and rgb.mode != "L":
            rgb = rgb.convert("L")
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(
            "too_many_pixels", f"image has more than {max_pixels} pixels", status=413
        ) from exc
    except Exception as exc:  # any decoder failure: never echo the decoder's words
        raise ImageRejected(
            "invalid_image", "not a readable PNG, JPEG, BMP, TIFF or WebP image"
        ) from exc
    if rgb.size != img.size:  # EXIF rotated by 90/270 degrees
        w, h = h, w
    return DecodedImage(rgb=rgb, width=w, height=h, format=fmt)


# Bytes per decoded pixel by Pillow mode: what a file of that mode costs in memory.
MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "PA": 2, "La": 2, "I;16": 2, "I;16B": 2,
              "I;16L": 2, "I;16N": 2, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3}


def decoded_bytes(img: Image.Image) -> int:
    """Memory the decoded pixels take (4 bytes per pixel for any mode not listed)."""
    w, h = img.size
    return w * h * MODE_BYTES.get(img.mode, 4)


def _stretch_to_8bit(img: Image.Image, rows_per_chunk: int = 256) -> Image.Image:
    """A 16/32-bit or float grey image -> 8-bit grey, its own range stretched to 0..255
    (floor((v - lo) * 255 / (hi - lo))). Works a band of rows at a time, so memory stays
    at the 8-bit result plus one band, never a float64 copy of the whole frame."""
    extrema = img.getextrema()  # one band: (min, max)
    lo, hi = float(extrema[0]), float(extrema[1])  # type: ignore[arg-type]
    w, h = img.size
    out = np.zeros((h, w), np.uint8)
    if hi > lo:
        for top in range(0, h, rows_per_chunk):
            band = np.asarray(img.crop((0, top, w, min(h, top + rows_per_chunk))))
            scaled: np.ndarray
            if img.mode == "F":
                scaled = (band.astype(np.float64) - lo) * (255.0 / (hi - lo))
            else:  # exact integer floor: no float rounding at the steps
                scaled = (band.astype(np.int64) - int(lo)) * 255 // (int(hi) - int(lo))
            out[top:top + band.shape[0]] = np.clip(scaled, 0, 255)
    return Image.fromarray(out, mode="L")


def to_rgb(img: Image.Image) -> Image.Image:
    """Grey, 16-bit, float, palette, RGBA and CMYK images -> 8-bit RGB (an 8-bit grey
    image stays grey: both the grey and the colour path can take it)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        img = _stretch_to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, (255, 255, 255))
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img if img.mode in ("RGB", "L") else img.convert("RGB")


def to_input(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """Image -> (S, S, C) uint8, squash-resized, C = 1 for a grey backbone else 3: what
    the serving network takes (normalisation runs inside it, see ServingNet)."""
    s = cfg.input_size
    mode = "L" if cfg.grey else "RGB"
    if img.mode != mode:
        img = img.convert(mode)
    im = img.resize((s, s), Image.Resampling.BILINEAR, reducing_gap=3.0)
    a = np.asarray(im, dtype=np.uint8)
    return a[:, :, None] if cfg.grey else a


def normalise(batch: np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """(N, S, S, C) uint8 -> (N, 3, S, S) float32 normalised: the training-side twin of
    ServingNet's first layers (a grey channel is replicated to three)."""
    if batch.shape[-1] == 1:
        batch = np.repeat(batch, 3, axis=-1)
    a = batch.astype(np.float32) * np.float32(1.0 / 255.0)
    norm = (a - np.asarray(cfg.mean, np.float32)) / np.asarray(cfg.std, np.float32)
    return np.ascontiguousarray(norm.transpose(0, 3, 1, 2), dtype=np.float32)


def to_tensor(rgb: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """RGB image -> (3, S, S) float32 normalised as the backbone's config says."""
    return normalise(to_input(rgb, cfg)[None], cfg)[0]


def load_for_backbone(data: bytes, cfg: PreprocessConfig, max_pixels: int) -> np.ndarray:
    dec = decode_image(data, max_pixels, draft_to=cfg.input_size, grey=cfg.grey)
    return to_input(dec.rgb, cfg)
