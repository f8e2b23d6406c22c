"""Per-group result push configuration (admin)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import Admin, GroupPath, RuntimeDep
from app.schemas import PushConfig, PushPublic
from app.services import push_targets as svc
from app.services import scope

router = APIRouter(prefix="/api/v1/groups/{group}/push", tags=["push"])


@router.put("", response_model=PushPublic)
def set_push(group: GroupPath, body: PushConfig, rt: RuntimeDep, who: Admin) -> PushPublic:
    """Push this group's classification results to a signed webhook and/or an MQTT topic."""
    scope.check_group(rt, who, group)
    return svc.configure(rt, group, body, who)


@router.get("", response_model=PushPublic)
def get_push(group: GroupPath, rt: RuntimeDep, who: Admin) -> PushPublic:
    scope.check_group(rt, who, group)
    return svc.get(rt, group)


@router.delete("", status_code=204)
def delete_push(group: GroupPath, rt: RuntimeDep, who: Admin) -> Response:
    scope.check_group(rt, who, group)
    svc.remove(rt, group, who)
    return Response(status_code=204)
