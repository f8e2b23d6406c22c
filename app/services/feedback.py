"""Operator feedback: statistics, confusion, and promoting a corrected image."""

from __future__ import annotations

import asyncio
from collections import Counter

from app.errors import Conflict, NotFound, Unprocessable
from app.schemas import (
    ClassPublic,
    ConfusionCell,
    FeedbackCreate,
    FeedbackPublic,
    FeedbackStats,
    ImagePublic,
)
from app.services import scope
from app.services.enrolment import enrol_bytes, get_class
from app.services.keys import Principal
from app.services.runtime import Runtime
from storage import repositories as repo
from storage.blobs import sha256_hex
from storage.tables import Feedback


def stats(rt: Runtime, group: str | None, who: Principal) -> FeedbackStats:
    if group is not None:
        scope.check_group(rt, who, group)
    with rt.sessions() as s:
        rows = [(fb, res) for fb, res in repo.feedback_rows(s, group)
                if scope.reaches(who, res.group_name)]
        names = {c.id: c.name for c in repo.list_classes(s, group)}
    cells: Counter[tuple[int | None, int | None]] = Counter()
    correct = 0
    for fb, res in rows:
        if fb.correct:
            correct += 1
        truth = res.class_id if fb.correct else fb.class_id
        cells[(res.class_id, truth)] += 1
    confusion = [ConfusionCell(predicted_class_id=p, predicted_label=names.get(p) if p else None,
                               true_class_id=t, true_label=names.get(t) if t else None, count=n)
                 for (p, t), n in sorted(cells.items(), key=lambda kv: -kv[1])]
    return FeedbackStats(group=group, feedback=len(rows), correct=correct,
                         wrong=len(rows) - correct, confusion=confusion)


async def promote(rt: Runtime, feedback_id: int, who: Principal
                  ) -> tuple[list[ImagePublic], ClassPublic]:
    """Add the classified image behind a feedback to its right class's support set."""
    with rt.sessions() as s:
        fb = s.get(Feedback, feedback_id)
        if fb is None:
            raise NotFound(f"feedback {feedback_id} not found")
        res = repo.get_result(s, fb.result_id)
        if res is None:  # feedback goes with its result (a foreign key): never here
            raise NotFound(f"the result of feedback {feedback_id} is gone")
        scope.check(rt, who, res.group_name, f"feedback {feedback_id} not found")
        target = res.class_id if fb.correct else fb.class_id
        sha, name, ref, group = res.sha256, res.filename, res.image_ref, res.group_name
    if target is None:
        raise Conflict("there is no class to promote it into: the operator confirmed an "
                       "'unknown' result, or the class was deleted", code="no_target_class")
    cls = get_class(rt, target, who)
    if cls.group != group:  # never move one line's image into another line's class
        raise Conflict(f"class {target} is in group {cls.group!r}, the image was classified "
                       f"in {group!r}", code="group_mismatch")
    data = await asyncio.to_thread(kept_image, rt, sha, ref)
    if data is None:
        raise Conflict("the classified image was not kept (FSDI_KEEP_QUERY_IMAGES=false, "
                       "the disk refused it, it was lost in a crash before it reached the "
                       "disk, or FSDI_QUERY_IMAGE_RETENTION_DAYS removed it)",
                       code="image_not_kept")
    return await enrol_bytes(rt, cls, [(name, data)], who)


def kept_image(rt: Runtime, sha: str, ref: str | None) -> bytes | None:
    """A classified image's bytes: from its pack, checked against its sha256 (a torn tail
    after a crash is no image); else from the blob store (kept there before packs, or
    enrolled as a support image meanwhile)."""
    if ref is not None:
        data = rt.packs.read(ref)
        if data is not None and sha256_hex(data) == sha:
            return data
    return rt.blobs.get(sha)


def record(rt: Runtime, body: FeedbackCreate, who: Principal) -> FeedbackPublic:
    """Record an operator's verdict on a result, with its audit event, in one transaction;
    the right class must be in the result's group."""
    with rt.sessions.begin() as s:
        res = repo.get_result(s, body.result_id)
        if res is None:
            raise NotFound(f"result {body.result_id} not found")
        scope.check(rt, who, res.group_name, f"result {body.result_id} not found")
        if not body.correct and body.class_id is None:
            raise Unprocessable("give class_id, the right class, when correct is false",
                                code="class_required")
        if body.class_id is not None:
            cls = repo.get_class(s, body.class_id)
            if cls is None or cls.group_name != res.group_name:
                raise Unprocessable(f"class {body.class_id} is not in group "
                                    f"{res.group_name!r}", code="bad_class")
        fb = Feedback(result_id=res.id, correct=body.correct, class_id=body.class_id,
                      key_id=who.key_id)
        s.add(fb)
        s.flush()
        rt.metrics.feedback.labels(str(body.correct).lower()).inc()
        repo.audit(s, who.actor, "feedback", f"result={res.id} correct={body.correct} "
                   f"class={body.class_id}")
        return FeedbackPublic(id=fb.id, result_id=fb.result_id, correct=fb.correct,
                              class_id=fb.class_id, created_at=fb.created_at)
