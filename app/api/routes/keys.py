"""API keys (admin only)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from app.api.deps import Admin, IdPath, RuntimeDep
from app.errors import NotFound
from app.schemas import KeyCreate, KeyCreated, KeyList, KeyPublic
from app.services import keys as svc
from storage import repositories as repo
from storage.tables import ApiKey

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])


def _public(k: ApiKey) -> KeyPublic:
    return KeyPublic(id=k.id, role=k.role, label=k.label, prefix=k.prefix,
                     created_at=k.created_at, revoked=k.revoked_at is not None)


@router.post("", status_code=201, response_model=KeyCreated)
def create_key(body: KeyCreate, rt: RuntimeDep, who: Admin) -> KeyCreated:
    assert rt.sessions is not None
    with rt.sessions.begin() as s:
        row, key = svc.create_key(s, body.role, body.label)
        repo.audit(s, who.actor, "key.create", f"id={row.id} role={row.role}")
        return KeyCreated(**_public(row).model_dump(), key=key)


@router.get("", response_model=KeyList)
def list_keys(rt: RuntimeDep, _: Admin) -> KeyList:
    assert rt.sessions is not None
    with rt.sessions() as s:
        return KeyList(items=[_public(k) for k in repo.list_keys(s)])


@router.delete("/{key_id}", status_code=204)
def revoke_key(key_id: IdPath, rt: RuntimeDep, who: Admin) -> Response:
    assert rt.sessions is not None
    with rt.sessions.begin() as s:
        row = s.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"key {key_id} not found")
        repo.revoke_key(s, row)
        repo.audit(s, who.actor, "key.revoke", f"id={key_id}")
    rt.key_cache.clear()  # committed: no request after this one gets in with that key
    return Response(status_code=204)
