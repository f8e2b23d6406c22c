"""Idempotent /classify: a client that sends `Idempotency-Key: K` and retries (after a
timeout, a dropped connection, its own restart) gets the first answer back, and the
images are classified and stored once. The key is claimed before the work starts and the
answer kept when it ends, per API key, for a day (storage.tables.IdempotentRequest;
Runtime.prune_idempotent forgets older ones).

A retry while the first request still runs gets 409 `in_progress` (retry shortly); the
same key with a different request (group, options, a file's name or bytes) gets 422. A
claim with no answer after RUNNING_S was left by a server that died mid-request: the
retry runs it (if that server had stored its results just before dying, they are stored
a second time; the window is the few milliseconds between the two commits).
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

from sqlalchemy.exc import IntegrityError

from app.services.keys import Principal
from app.services.runtime import Runtime
from storage import repositories as repo
from storage.tables import utcnow

RUNNING_S = 120.0


def fingerprint(group: str, options: dict[str, object], parts: list[tuple[str, bytes]]
                ) -> str:
    """sha256 over what was asked: the group, the options, each file's name and bytes."""
    h = hashlib.sha256(group.encode())
    h.update(repr(sorted(options.items())).encode())
    for name, data in parts:
        h.update(b"\0" + name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def claim(rt: Runtime, who: Principal, key: str, request_hash: str) -> repo.Claim:
    scope = who.key_id or 0
    try:
        with rt.sessions.begin() as s:
            repo.add_idempotent(s, scope, key, request_hash)
        return repo.Claim()
    except IntegrityError:  # claimed before: by this request's first try, or another
        with rt.sessions.begin() as s:
            return repo.existing_idempotent(s, scope, key, request_hash,
                                            utcnow() - timedelta(seconds=RUNNING_S))


def finish(rt: Runtime, who: Principal, key: str, response: str | None) -> None:
    """Keep the answer (None: the request failed; release the key for a retry)."""
    with rt.sessions.begin() as s:
        repo.finish_idempotent(s, who.key_id or 0, key, response)
