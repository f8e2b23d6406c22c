"""The append-only audit log (admin only), newest last, paged."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import Admin, RuntimeDep
from app.schemas import MAX_ID, AuditList, AuditPublic
from app.services import scope
from storage import repositories as repo

router = APIRouter(prefix="/api/v1/audit", tags=["audit"])


@router.get("", response_model=AuditList)
def list_audit(rt: RuntimeDep, who: Admin, offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
               limit: Annotated[int | None, Query(ge=1, le=1000)] = None) -> AuditList:
    scope.require_unscoped(rt, who, "read the audit log (it spans every group)")
    n = min(limit or rt.settings.page_size, rt.settings.page_size)
    with rt.sessions() as s:
        rows = repo.list_audit(s, offset, n)
        return AuditList(items=[AuditPublic(id=r.id, at=r.at, actor=r.actor, action=r.action,
                                            detail=r.detail) for r in rows],
                         offset=offset, limit=n)
