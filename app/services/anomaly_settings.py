"""A group's false-alarm rate for its good-parts threshold: read, set, reset. A change
bumps the group's version (other replicas reload it) and rebuilds its threshold here."""

from __future__ import annotations

import asyncio

from app.schemas import FalseAlarmRate, GroupAnomalySettings
from app.services.keys import Principal
from app.services.runtime import Runtime
from storage import repositories as repo


def get(rt: Runtime, group: str) -> GroupAnomalySettings:
    with rt.sessions() as s:
        own = repo.false_alarm_rates(s, group).get(group)
    return GroupAnomalySettings(group=group, false_alarm_rate=own,
                                effective=own or rt.settings.anomaly_false_alarm_rate)


async def set_rate(rt: Runtime, group: str, body: FalseAlarmRate, who: Principal
                   ) -> GroupAnomalySettings:
    with rt.sessions.begin() as s:
        repo.set_false_alarm_rate(s, group, body.false_alarm_rate)
        repo.bump_group(s, group)
        repo.audit(s, who.actor, "anomaly.set",
                   f"group={group} false_alarm_rate={body.false_alarm_rate}")
    await asyncio.to_thread(_rebuild, rt, group)
    return get(rt, group)


def _rebuild(rt: Runtime, group: str) -> None:
    if rt.cache.served(group) is None:
        return  # nothing enrolled yet: the rate applies when good images arrive
    with rt.sessions() as s:
        rt.cache.refresh_good(s, group)
