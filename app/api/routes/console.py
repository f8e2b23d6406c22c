"""Endpoints the web console needs: who am I, which groups exist, image thumbnails."""

from __future__ import annotations

import asyncio
import io
from typing import Annotated

from fastapi import APIRouter, Query, Response
from PIL import Image

from app.api.deps import Classifier, GroupPath, IdPath, Operator, RuntimeDep
from app.errors import NotFound
from app.schemas import GroupList, GroupPublic, GroupReportPublic, Me
from app.services.reports import report_for
from storage import repositories as repo
from storage.tables import SupportImage

router = APIRouter(prefix="/api/v1", tags=["console"])


@router.get("/me", response_model=Me)
def me(who: Classifier) -> Me:
    """The calling key's role, so a client shows only what it may do."""
    return Me(role=who.role, key_id=who.key_id)


@router.get("/groups", response_model=GroupList)
def list_groups(rt: RuntimeDep, _: Operator) -> GroupList:
    with rt.sessions() as s:
        counts: dict[str, int] = {}
        for c in repo.list_classes(s):
            counts[c.group_name] = counts.get(c.group_name, 0) + 1
    return GroupList(items=[GroupPublic(name=g, class_count=n) for g, n in sorted(counts.items())])


def _thumbnail(data: bytes, size: int) -> bytes:
    from models.preprocess import decode_image

    img = decode_image(data, 10**9, draft_to=size).rgb
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


@router.get("/groups/{group}/report", response_model=GroupReportPublic)
def group_report(group: GroupPath,
                 rt: RuntimeDep, _: Operator) -> GroupReportPublic:
    """Leave-one-out accuracy, per-class recall, the most confusable pair and warnings."""
    return report_for(rt, group)


@router.get("/images/{image_id}", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
async def get_image(image_id: IdPath, rt: RuntimeDep, _: Operator,
                size: Annotated[int, Query(ge=16, le=512)] = 128) -> Response:
    """A support image as a JPEG thumbnail no larger than size x size (evidence views)."""
    with rt.sessions() as s:
        img = s.get(SupportImage, image_id)
        if img is None or not rt.blobs.exists(img.sha256):
            raise NotFound(f"image {image_id} not found")
        digest = img.sha256
    data = await asyncio.to_thread(rt.blobs.get, digest)
    thumb = await asyncio.get_running_loop().run_in_executor(rt.decode_pool, _thumbnail,
                                                             data, size)
    return Response(thumb, media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})
