"""API keys: generated once, stored only as sha256, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.errors import NotFound, Unauthorized
from app.schemas import KeyCreated, KeyPublic
from app.settings import Settings
from storage import repositories as repo
from storage.tables import ApiKey

ROLES = ("admin", "operator", "machine")


@dataclass(frozen=True)
class Principal:
    role: str
    key_id: int | None  # None for the FSDI_ADMIN_KEY bootstrap admin
    actor: str
    groups: frozenset[str] | None = None  # the groups it reaches (None: every group)


def stored_groups(groups: list[str] | None) -> str | None:
    return None if groups is None else json.dumps(sorted(set(groups)))


def loaded_groups(text: str | None) -> frozenset[str] | None:
    return None if text is None else frozenset(json.loads(text))


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "fsdi_" + secrets.token_urlsafe(32)


def create_key(s: Session, role: str, label: str, groups: list[str] | None = None
               ) -> tuple[ApiKey, str]:
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if groups is not None and not groups:
        raise ValueError("a scoped key names at least one group")
    key = new_key()
    row = ApiKey(key_hash=hash_key(key), prefix=key[:10], role=role, label=label,
                 groups=stored_groups(groups))
    s.add(row)
    s.flush()
    return row, key


def public(k: ApiKey) -> KeyPublic:
    groups = loaded_groups(k.groups)
    return KeyPublic(id=k.id, role=k.role, label=k.label, prefix=k.prefix,
                     created_at=k.created_at, revoked=k.revoked_at is not None,
                     groups=None if groups is None else sorted(groups))


def issue(sessions: sessionmaker[Session], role: str, label: str, actor: str,
          groups: list[str] | None = None) -> KeyCreated:
    """Create a key and audit it in one transaction; the secret is in the answer only."""
    with sessions.begin() as s:
        row, key = create_key(s, role, label, groups)
        scope = "" if row.groups is None else f" groups={','.join(sorted(groups or []))}"
        repo.audit(s, actor, "key.create", f"id={row.id} role={row.role}{scope}")
        return KeyCreated(**public(row).model_dump(), key=key)


def listing(sessions: sessionmaker[Session]) -> list[KeyPublic]:
    with sessions() as s:
        return [public(k) for k in repo.list_keys(s)]


def revoke(sessions: sessionmaker[Session], key_id: int, actor: str) -> None:
    """Revoke at once (idempotent); 404 for an unknown id. Other replicas, and a running
    server when the CLI revokes, drop the key from their caches at their next sync."""
    with sessions.begin() as s:
        row = s.get(ApiKey, key_id)
        if row is None:
            raise NotFound(f"key {key_id} not found")
        repo.revoke_key(s, row)
        repo.audit(s, actor, "key.revoke", f"id={key_id}")


@lru_cache(maxsize=4)
def _admin_digest(admin_key: str) -> str:
    return hash_key(admin_key)


def env_admin(digest: str, settings: Settings) -> Principal | None:
    """The FSDI_ADMIN_KEY bootstrap admin (`digest` = hash_key of the presented key),
    recognised without touching the database."""
    if settings.admin_key and hmac.compare_digest(digest, _admin_digest(settings.admin_key)):
        return Principal("admin", None, "admin-env")
    return None


def bearer_token(authorization: str | None) -> str:
    """The key in an `Authorization: Bearer <key>` header; 401 when there is none."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing 'Authorization: Bearer <key>' header")
    return token.strip()


def authenticate(s: Session, digest: str) -> Principal:
    """A stored key by its digest (hash_key of the presented key); 401 if unknown or
    revoked. The FSDI_ADMIN_KEY admin is `env_admin`'s."""
    row = repo.key_by_hash(s, digest)
    if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at:
        raise Unauthorized("invalid or revoked API key")
    return Principal(row.role, row.id, f"key:{row.id}", loaded_groups(row.groups))


def bootstrap_admin(s: Session, settings: Settings) -> str | None:
    """With no FSDI_ADMIN_KEY and no admin key stored, make one and return it (once)."""
    if settings.admin_key or repo.count_active_admins(s) > 0:
        return None
    _, key = create_key(s, "admin", "bootstrap")
    return key


class KeyCache:
    """Stored keys verified in the last `ttl_s` seconds, so that a factory system's every
    request does not wait for a database round trip. Only successful checks are kept (a
    new key works at once). It never outlives a revocation by more than the replica sync
    interval: `clear()` runs after a revocation on this replica, and `observe()` clears it
    whenever the keys table's stamp moves (another replica changed a key); an
    entry is trusted for `ttl_s` at most, even if the sync loop stalls."""

    MAX_ENTRIES = 10_000

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()
        self._generation = 0
        self._stamp: Any = None

    @property
    def generation(self) -> int:
        """Read before a database check and pass to `put`: a check that raced with a
        clear() is not cached."""
        return self._generation

    def get(self, digest: str) -> Principal | None:
        hit = self._entries.get(digest)
        if hit is None or time.monotonic() - hit[1] > self.ttl_s:
            return None
        return hit[0]

    def put(self, digest: str, who: Principal, generation: int) -> None:
        if self.ttl_s <= 0:
            return
        with self._lock:
            if generation != self._generation:
                return
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (who, time.monotonic())

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._entries.clear()

    def observe(self, stamp: Any) -> None:
        """The keys table's current stamp (repo.keys_stamp); a change clears the cache."""
        if stamp != self._stamp:
            self.clear()
            self._stamp = stamp
