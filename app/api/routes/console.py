"""Endpoints the web console needs: who am I, which groups exist, image thumbnails."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from app.api.deps import Classifier, GroupPath, IdPath, Operator, RuntimeDep
from app.schemas import GroupList, GroupReportPublic, Me
from app.services import console as console_svc
from app.services import scope
from app.services.reports import report_for

router = APIRouter(prefix="/api/v1", tags=["console"])


@router.get("/me", response_model=Me)
def me(who: Classifier) -> Me:
    """The calling key's role, so a client shows only what it may do."""
    return Me(role=who.role, key_id=who.key_id,
              groups=None if who.groups is None else sorted(who.groups))


@router.get("/groups", response_model=GroupList)
def list_groups(rt: RuntimeDep, who: Operator) -> GroupList:
    return console_svc.groups(rt, who)


@router.get("/groups/{group}/report", response_model=GroupReportPublic)
def group_report(group: GroupPath,
                 rt: RuntimeDep, who: Operator) -> GroupReportPublic:
    """Leave-one-out accuracy, per-class recall, the most confusable pair and warnings."""
    scope.check(rt, who, group, f"group {group!r} has no classes with support images")
    return report_for(rt, group)


@router.get("/images/{image_id}", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
async def get_image(image_id: IdPath, rt: RuntimeDep, who: Operator,
                size: Annotated[int, Query(ge=16, le=512)] = 128) -> Response:
    """A support image as a JPEG thumbnail no larger than size x size (evidence views)."""
    return Response(await console_svc.thumbnail(rt, who, image_id, size), media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})
