"""The enrolment report for a group, from its cached snapshot."""

from __future__ import annotations

from app.errors import NotFound
from app.schemas import ClassReportPublic, GoodPartsReport, GroupReportPublic, ScoresReport
from app.services.runtime import Runtime
from models.inference import GroupIndex
from models.report import served_report


def report_for(rt: Runtime, group: str) -> GroupReportPublic:
    snap = rt.cache.snapshot(group)
    if snap is None:
        raise NotFound(f"group {group!r} has no classes with support images")
    r = served_report(snap)
    e = snap.entries

    def name(i: int | None) -> str | None:
        return e[i].name if i is not None else None

    classes = [ClassReportPublic(
        class_id=e[c.index].class_id, label=e[c.index].name, images=len(e[c.index].image_ids),
        loo_evaluated=c.evaluated, loo_recall=c.recall,
        nearest_class_id=e[c.nearest_other].class_id if c.nearest_other is not None else None,
        nearest_label=name(c.nearest_other), nearest_distance=c.nearest_other_distance,
        spread=c.spread, warning=c.warning) for c in r.classes]
    confusable: dict[str, str | int] | None = None
    if r.confusable:
        t, p, n = r.confusable
        confusable = {"true": e[t].name, "predicted": e[p].name, "count": n}
    closest: dict[str, str | float] | None = None
    if r.closest_pair:
        a, b, d = r.closest_pair
        closest = {"a": e[a].name, "b": e[b].name, "distance": round(d, 4)}
    warnings = [f"{c.label}: {c.warning}" for c in classes if c.warning]
    good = None
    served = rt.cache.served(group)
    gp = served.good_parts if served is not None else None
    if gp is not None:
        good = GoodPartsReport(
            good_images=gp.memory.n_good, false_alarm_rate=gp.false_alarm_rate,
            threshold=round(gp.threshold, 6), calibrated_on=gp.held_out, rule=gp.rule,
            defect_examples=gp.defect_examples, defect_examples_flagged=gp.defect_flagged,
            warning=gp.warning, memory_patches=len(gp.memory.bank),
            memory_radius=round(gp.memory.radius, 6))
        if gp.warning:
            warnings.append(f"good parts: {gp.warning}")
    scores = None
    named = (served.defects if served is not None and served.good_parts is not None
             else snap)
    if named is not None:
        scores = scores_report(named)
        if scores.warning:
            warnings.append(f"scores: {scores.warning}")
    return GroupReportPublic(group=group, loo_evaluated=r.evaluated, loo_accuracy=r.accuracy,
                             most_confused=confusable, closest_pair=closest, classes=classes,
                             warnings=warnings, good_parts=good, scores=scores)


def scores_report(index: GroupIndex) -> ScoresReport:
    fitted = index.calibrated_on > 0
    warning = None
    if len(index.entries) < 2:
        warning = ("one class to choose from: every accepted image scores 1.0, so the score "
                   "says nothing until a second class is enrolled")
    elif not fitted and index.calibrate:
        warning = ("no class has two images, so nothing can be held out: the temperature is "
                   "set from how far apart the classes lie (a prior, not this group's own "
                   "evidence), so scores are only roughly calibrated (enrol a second image "
                   "per class)")
    return ScoresReport(temperature=round(index.temperature, 6), fitted=fitted,
                        calibrated_on=index.calibrated_on, warning=warning)
