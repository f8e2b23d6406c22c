"""Scoped keys: a key that names groups reaches those groups and nothing else.

Every service that reads or writes a group's data asks here where it fetched the row (by
id as well as by group name). Another group's object answers exactly as a missing one
(the same 404), so a scoped key learns nothing about it, not even that it exists; each
such refusal is counted (`fsdi_auth_refusals_total{reason="scope"}`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.errors import Forbidden, NotFound

if TYPE_CHECKING:
    from app.services.keys import Principal
    from app.services.runtime import Runtime


def reaches(who: Principal, group: str) -> bool:
    return who.groups is None or group in who.groups


def check(rt: Runtime, who: Principal, group: str | None, missing: str) -> None:
    """404 `missing` (the message a missing object gets) unless `who` reaches `group`.
    `group` None: the object does not exist, and the caller raises its own 404."""
    if group is not None and not reaches(who, group):
        rt.metrics.auth_refusals.labels("scope").inc()
        raise NotFound(missing)


def check_group(rt: Runtime, who: Principal, group: str) -> None:
    """A request that names a group: 404 unless the key reaches it."""
    check(rt, who, group, f"group {group!r} not found")


def allowed_groups(who: Principal) -> tuple[str, ...] | None:
    """The groups a list may hold (None: every group)."""
    return None if who.groups is None else tuple(sorted(who.groups))


def require_unscoped(rt: Runtime, who: Principal, what: str) -> None:
    """Keys and the audit log span every group: only an unscoped key manages or reads them."""
    if who.groups is not None:
        rt.metrics.auth_refusals.labels("scope").inc()
        raise Forbidden(f"a key scoped to groups may not {what}")
