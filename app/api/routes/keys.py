"""API keys (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import Admin, IdPath, RuntimeDep
from app.schemas import KeyCreate, KeyCreated, KeyList
from app.services import keys as svc
from app.services import scope

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])


@router.post("", status_code=201, response_model=KeyCreated)
def create_key(body: KeyCreate, rt: RuntimeDep, who: Admin) -> KeyCreated:
    scope.require_unscoped(rt, who, "manage keys")
    return svc.issue(rt.sessions, body.role, body.label, who.actor, body.groups)


@router.get("", response_model=KeyList)
def list_keys(rt: RuntimeDep, who: Admin) -> KeyList:
    scope.require_unscoped(rt, who, "manage keys")
    return KeyList(items=svc.listing(rt.sessions))


@router.delete("/{key_id}", status_code=204)
def revoke_key(key_id: IdPath, rt: RuntimeDep, who: Admin) -> Response:
    scope.require_unscoped(rt, who, "manage keys")
    svc.revoke(rt.sessions, key_id, who.actor)
    rt.key_cache.clear()  # committed: no request after this one gets in with that key
    return Response(status_code=204)
