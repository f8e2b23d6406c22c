"""Reading upload parts under the limits, and decoding them off the event loop."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from fastapi import UploadFile

from app.errors import ApiError, TooLarge, Unprocessable
from app.settings import Settings
from models.backbones import PreprocessConfig
from models.preprocess import ImageRejected, decode_image, to_input
from storage.blobs import sha256_hex


@dataclass(frozen=True)
class Upload:
    filename: str
    data: bytes
    sha256: str
    width: int
    height: int
    tensor: np.ndarray


def safe_name(name: str | None, index: int) -> str:
    name = (name or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    cleaned = "".join(ch for ch in name if ch.isprintable())[:255]
    return cleaned or f"file{index}"


async def read_parts(files: list[UploadFile], settings: Settings) -> list[tuple[str, bytes]]:
    if not files:
        raise Unprocessable("send one or more image parts named 'files'", code="no_files")
    if len(files) > settings.max_files_per_request:
        raise TooLarge(f"{len(files)} files in one request; the limit is "
                       f"{settings.max_files_per_request}", code="too_many_files")
    parts = []
    for i, f in enumerate(files):
        name = safe_name(f.filename, i)
        data = await f.read(settings.max_file_bytes + 1)
        if len(data) > settings.max_file_bytes:
            raise TooLarge(f"{name}: file is larger than {settings.max_file_bytes} bytes",
                           code="file_too_large")
        parts.append((name, data))
    return parts


def decode_one(name: str, data: bytes, cfg: PreprocessConfig, max_pixels: int,
               max_bytes: int | None = None) -> Upload:
    """One part -> Upload: sha256, decode (JPEG at a reduced DCT scale), resize."""
    try:
        img = decode_image(data, max_pixels, draft_to=cfg.input_size, grey=cfg.grey,
                           max_bytes=max_bytes)
    except ImageRejected as exc:
        raise ApiError(f"{name}: {exc}", code=exc.code, status=exc.status) from None
    return Upload(name, data, sha256_hex(data), img.width, img.height, to_input(img.rgb, cfg))


async def decode_all(
    parts: list[tuple[str, bytes]], cfg: PreprocessConfig, settings: Settings,
    pool: ThreadPoolExecutor,
) -> list[Upload]:
    """Decode every part in the worker pool, one task per worker (not per image: fewer
    hand-offs through the event loop); the first bad file in request order fails the
    whole request."""
    loop = asyncio.get_running_loop()
    n = min(settings.decode_workers, len(parts))
    tasks = [loop.run_in_executor(pool, _decode_slice, parts[i::n], cfg,
                                  settings.max_image_pixels, settings.max_decoded_bytes)
             for i in range(n)]
    ordered: list[Upload | ApiError | None] = [None] * len(parts)
    for i, decoded in enumerate(await asyncio.gather(*tasks)):
        ordered[i::n] = decoded
    for r in ordered:
        if isinstance(r, ApiError):
            raise r
    return [r for r in ordered if isinstance(r, Upload)]


def _decode_slice(parts: list[tuple[str, bytes]], cfg: PreprocessConfig, max_pixels: int,
                  max_bytes: int) -> list[Upload | ApiError]:
    """A rejected file stays in its place as its error, so the caller can name the first."""
    out: list[Upload | ApiError] = []
    for name, data in parts:
        try:
            out.append(decode_one(name, data, cfg, max_pixels, max_bytes))
        except ApiError as exc:
            out.append(exc)
    return out
