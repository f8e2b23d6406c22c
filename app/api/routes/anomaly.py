"""A group's good-parts settings (admin): the false-alarm rate and the rule its threshold
follows."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Admin, GroupPath, Operator, RuntimeDep
from app.schemas import AnomalySettingsIn, GroupAnomalySettings
from app.services import anomaly_settings as svc
from app.services import scope

router = APIRouter(prefix="/api/v1/groups/{group}/anomaly", tags=["anomaly"])


@router.get("", response_model=GroupAnomalySettings)
def get_anomaly_settings(group: GroupPath, rt: RuntimeDep, who: Operator
                         ) -> GroupAnomalySettings:
    """The false-alarm rate and the rule this group's anomaly threshold follows."""
    scope.check_group(rt, who, group)
    return svc.get(rt, group)


@router.put("", response_model=GroupAnomalySettings)
async def set_anomaly_settings(group: GroupPath, body: AnomalySettingsIn, rt: RuntimeDep,
                               who: Admin) -> GroupAnomalySettings:
    """Set the share of good parts the threshold may flag (0 < rate <= 0.5) and the rule
    ("auto": defect images place it while the good images are too few for the rate;
    "false_alarm_rate": the good images alone); null for the service-wide
    FSDI_ANOMALY_FALSE_ALARM_RATE / FSDI_ANOMALY_THRESHOLD_RULE. The threshold is
    recalibrated now."""
    scope.check_group(rt, who, group)
    return await svc.set_rate(rt, group, body, who)
