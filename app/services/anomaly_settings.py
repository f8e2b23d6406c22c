"""A group's false-alarm rate and threshold rule for its good-parts threshold: read, set,
reset. A change bumps the group's version (other replicas reload it) and rebuilds its
threshold here."""

from __future__ import annotations

import asyncio

from app.schemas import AnomalySettingsIn, GroupAnomalySettings
from app.services.keys import Principal
from app.services.runtime import Runtime
from storage import repositories as repo


def get(rt: Runtime, group: str) -> GroupAnomalySettings:
    with rt.sessions() as s:
        own = repo.anomaly_overrides(s, group).get(group, repo.AnomalyOverrides())
    return GroupAnomalySettings(
        group=group, false_alarm_rate=own.false_alarm_rate,
        effective=own.false_alarm_rate or rt.settings.anomaly_false_alarm_rate,
        threshold_rule=own.threshold_rule,
        effective_rule=own.threshold_rule or rt.settings.anomaly_threshold_rule)


async def set_rate(rt: Runtime, group: str, body: AnomalySettingsIn, who: Principal
                   ) -> GroupAnomalySettings:
    with rt.sessions.begin() as s:
        repo.set_anomaly_overrides(s, group, body.false_alarm_rate, body.threshold_rule)
        repo.bump_group(s, group)
        repo.audit(s, who.actor, "anomaly.set",
                   f"group={group} false_alarm_rate={body.false_alarm_rate} "
                   f"threshold_rule={body.threshold_rule}")
    await asyncio.to_thread(_rebuild, rt, group)
    return get(rt, group)


def _rebuild(rt: Runtime, group: str) -> None:
    if rt.cache.served(group) is None:
        return  # nothing enrolled yet: the rate applies when good images arrive
    with rt.sessions() as s:
        rt.cache.refresh_good(s, group)
