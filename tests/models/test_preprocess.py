"""Decoding and preprocessing: every mode becomes the same RGB input; bad bytes refused."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from models.backbones import PreprocessConfig
from models.preprocess import ImageRejected, decode_image, to_input, to_tensor


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 on display
    dec = decode_image(encode(img, "JPEG", exif=exif), 10**6)
    assert (dec.width, dec.height) == (20, 40)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16", "LA", "1"])
def test_modes_become_rgb(mode: str) -> None:
    fmt = "TIFF" if mode in ("CMYK", "I;16") else "PNG"
    img = Image.new(mode, (16, 16))
    dec = decode_image(encode(img, fmt), 10**6)
    assert dec.rgb.mode in ("RGB", "L") and dec.rgb.size == (16, 16)  # 8-bit, upright
    assert decode_image(encode(img, fmt), 10**6, grey=True).rgb.mode == "L"


def test_sixteen_bit_keeps_contrast() -> None:
    a = np.zeros((8, 8), np.uint16)
    a[:, 4:] = 60000
    dec = decode_image(encode(Image.fromarray(a), "PNG"), 10**6)
    grey = np.asarray(dec.rgb)
    assert dec.rgb.mode == "L" and grey[0, 0] == 0 and grey[0, 7] == 255


def test_transparent_palette_is_composited_on_white() -> None:
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0)).convert("P")
    img.info["transparency"] = 0
    dec = decode_image(encode(img, "PNG", transparency=0), 10**6)
    assert np.asarray(dec.rgb).min() == 255


@pytest.mark.parametrize("data,code", [
    (b"", "empty_file"),
    (b"hello world, not an image", "invalid_image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 30, "invalid_image"),
    (b"GIF89a" + b"\x00" * 40, "invalid_image"),
])
def test_bad_bytes_are_rejected_without_decoder_text(data: bytes, code: str) -> None:
    with pytest.raises(ImageRejected) as e:
        decode_image(data, 10**6)
    assert e.value.code == code
    assert "cannot identify" not in str(e.value)


@pytest.mark.parametrize("draft_to", [None, 32])
def test_truncated_jpeg_is_rejected(draft_to: int | None) -> None:
    data = encode(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")
    with pytest.raises(ImageRejected):
        decode_image(data[: len(data) // 2], 10**6, draft_to=draft_to)


def pillow_draft(data: bytes, draft_to: int, mode: str) -> np.ndarray:
    img = Image.open(io.BytesIO(data))
    img.draft(mode, (draft_to, draft_to))
    return np.asarray(ImageOps.exif_transpose(img).convert(mode))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pillows_transpose(orientation: int) -> None:
    a = np.zeros((48, 64, 3), np.uint8)
    a[:8, :16] = 255  # a white corner shows every flip and turn
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(a), "JPEG", exif=exif, quality=95)
    for draft_to in (None, 16):
        dec = decode_image(data, 10**6, draft_to=draft_to)
        want = pillow_draft(data, draft_to or 64, "RGB")
        assert np.array_equal(np.asarray(dec.rgb), want)
        assert (dec.width, dec.height) == ((48, 64) if orientation >= 5 else (64, 48))


def test_pixel_limit_checked_from_header() -> None:
    with pytest.raises(ImageRejected) as e:
        decode_image(encode(Image.new("L", (300, 300))), 300 * 299)
    assert e.value.code == "too_many_pixels" and e.value.status == 413


def test_to_tensor_uses_backbone_config() -> None:
    cfg = PreprocessConfig(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    t = to_tensor(Image.new("RGB", (100, 50), (255, 255, 255)), cfg)
    assert t.shape == (3, 32, 32) and t.dtype == np.float32
    assert np.allclose(t, 1.0)


def test_grey_backbones_see_colour_and_grey_files_alike() -> None:
    """A grey backbone gets one channel whatever the camera sends; its version differs
    from the same weights served in colour."""
    cfg = PreprocessConfig(input_size=32, grey=True)
    colour = Image.new("RGB", (64, 48), (200, 100, 50))
    a = to_input(decode_image(encode(colour, "JPEG"), 10**6, draft_to=32, grey=True).rgb, cfg)
    b = to_input(colour.convert("L"), cfg)
    assert a.shape == (32, 32, 1) and abs(int(a.mean()) - int(b.mean())) <= 2
    from models.preprocess import normalise

    assert normalise(a[None], cfg).shape == (1, 3, 32, 32)


def test_sixteen_bit_stretch_is_exact_and_banded() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(1000, 50000, (700, 300), dtype=np.uint16)
    dec = decode_image(encode(Image.fromarray(a), "PNG"), 10**6)
    lo, hi = int(a.min()), int(a.max())
    want = ((a.astype(np.int64) - lo) * 255 // (hi - lo)).astype(np.uint8)
    assert np.array_equal(np.asarray(dec.rgb), want)  # 700 rows: several 256-row bands


def test_decoded_size_is_capped_from_the_header() -> None:
    a = np.zeros((100, 100), np.uint16)
    data = encode(Image.fromarray(a), "PNG")
    assert decode_image(data, 10**6, max_bytes=20_000).rgb.size == (100, 100)
    with pytest.raises(ImageRejected) as err:
        decode_image(data, 10**6, max_bytes=19_999)  # 100 x 100 x 2 bytes = 20,000
    assert err.value.code == "too_many_bytes" and err.value.status == 413
