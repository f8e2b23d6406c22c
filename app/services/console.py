"""What the web console reads: the groups and their class counts, support thumbnails."""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from app.errors import NotFound
from app.schemas import GroupList, GroupPublic
from app.services import scope
from app.services.keys import Principal
from app.services.runtime import Runtime
from storage import repositories as repo
from storage.tables import SupportImage


def groups(rt: Runtime, who: Principal) -> GroupList:
    with rt.sessions() as s:
        counts: dict[str, int] = {}
        for c in repo.list_classes(s):
            if scope.reaches(who, c.group_name):
                counts[c.group_name] = counts.get(c.group_name, 0) + 1
    return GroupList(items=[GroupPublic(name=g, class_count=n) for g, n in sorted(counts.items())])


def jpeg_thumbnail(data: bytes, size: int, max_pixels: int) -> bytes:
    from models.preprocess import decode_image

    img = decode_image(data, max_pixels, draft_to=size).rgb
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


async def thumbnail(rt: Runtime, who: Principal, image_id: int, size: int) -> bytes:
    """A support image as a JPEG no larger than size x size, decoded off the event loop."""
    with rt.sessions() as s:
        img = s.get(SupportImage, image_id)
        if img is None:
            raise NotFound(f"image {image_id} not found")
        scope.check(rt, who, img.defect_class.group_name, f"image {image_id} not found")
        digest = img.sha256
    data = await asyncio.to_thread(rt.blobs.get, digest)
    if data is None:
        raise NotFound(f"image {image_id} not found")
    return await asyncio.get_running_loop().run_in_executor(
        rt.decode_pool, jpeg_thumbnail, data, size, rt.settings.max_image_pixels)
