"""Repository functions: every query the service runs, in one place."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NotRequired, TypedDict, cast

import numpy as np
from sqlalchemy import (
    ColumnElement,
    Table,
    any_,
    delete,
    func,
    insert,
    or_,
    select,
    union_all,
)
from sqlalchemy.dialects.postgresql import array
from sqlalchemy.orm import Session

from storage.notify import notify_change
from storage.tables import (
    ApiKey,
    AuditEvent,
    ClassificationResult,
    DefectClass,
    Embedding,
    Feedback,
    GroupSetting,
    GroupVersion,
    IdempotentRequest,
    PatchFeatures,
    PushTarget,
    SupportImage,
    utcnow,
)


def new_embedding(vector: np.ndarray, backbone: str, weights_sha256: str, model_version: str,
                  image_id: int | None = None) -> Embedding:
    """The one place an Embedding row is built: little-endian float32 bytes, its width,
    and the backbone facts every stored embedding records."""
    row = Embedding(backbone=backbone, weights_sha256=weights_sha256,
                    model_version=model_version, dim=int(vector.shape[0]),
                    vector=vector_to_bytes(vector))
    if image_id is not None:
        row.image_id = image_id
    return row


def vector_to_bytes(v: np.ndarray) -> bytes:
    return np.asarray(v, dtype="<f4").tobytes()


def bytes_to_vector(b: bytes) -> np.ndarray:
    return np.frombuffer(b, dtype="<f4").astype(np.float32)


def new_patches(patches: np.ndarray, patch_version: str, image_id: int | None = None
                ) -> PatchFeatures:
    """An image's patch features (h, w, C) as a row: little-endian float16 bytes
    (unit vectors: half precision moves a cosine distance by < 1e-3)."""
    h, w, c = patches.shape
    row = PatchFeatures(model_version=patch_version, grid_h=h, grid_w=w, channels=c,
                        data=np.asarray(patches, dtype="<f2").tobytes())
    if image_id is not None:
        row.image_id = image_id
    return row


@dataclass(frozen=True)
class StoredPatches:
    image_id: int
    class_id: int
    patches: np.ndarray  # (h, w, C) float32


def patches_for(s: Session, patch_version: str, class_ids: Sequence[int],
                latest: int | None = None) -> list[StoredPatches]:
    """The stored patch features of these classes' images under one patch version, in
    enrolment order; with `latest`, only the most recently enrolled that many."""
    if not class_ids:
        return []
    q = _patch_rows(patch_version).where(SupportImage.class_id.in_(list(class_ids)))
    if latest is None:
        return _stored(s, q.order_by(SupportImage.id))
    return _stored(s, q.order_by(SupportImage.id.desc()).limit(latest))[::-1]


def patch_image_ids(s: Session, patch_version: str, class_ids: Sequence[int]
                    ) -> list[tuple[int, int]]:
    """(image id, class id) of these classes' images that have patch features under one
    patch version, in enrolment order, without reading the features."""
    if not class_ids:
        return []
    q = (select(SupportImage.id, SupportImage.class_id)
         .join(PatchFeatures, PatchFeatures.image_id == SupportImage.id)
         .where(PatchFeatures.model_version == patch_version,
                SupportImage.class_id.in_(list(class_ids)))
         .order_by(SupportImage.id))
    return [(int(i), int(c)) for i, c in s.execute(q)]


def patches_for_images(s: Session, patch_version: str, image_ids: Sequence[int]
                       ) -> list[StoredPatches]:
    """The stored patch features of these images under one patch version (those that
    have them), in enrolment order."""
    if not image_ids:
        return []
    return _stored(s, _patch_rows(patch_version).where(SupportImage.id.in_(list(image_ids)))
                   .order_by(SupportImage.id))


def _patch_rows(patch_version: str):  # type: ignore[no-untyped-def]
    return (select(SupportImage.id, SupportImage.class_id, PatchFeatures.grid_h,
                   PatchFeatures.grid_w, PatchFeatures.channels, PatchFeatures.data)
            .join(PatchFeatures, PatchFeatures.image_id == SupportImage.id)
            .where(PatchFeatures.model_version == patch_version))


def _stored(s: Session, q) -> list[StoredPatches]:  # type: ignore[no-untyped-def]
    return [StoredPatches(i, c, np.frombuffer(d, dtype="<f2").astype(np.float32)
                          .reshape(h, w, ch)) for i, c, h, w, ch, d in s.execute(q)]


def have_patches(s: Session, patch_version: str, image_ids: Sequence[int]) -> set[int]:
    """Which of these images already have patch features of this version."""
    return set(s.scalars(select(PatchFeatures.image_id).where(
        PatchFeatures.model_version == patch_version,
        PatchFeatures.image_id.in_(list(image_ids)))).all())


def _missing_patches(patch_version: str, good_only: bool):  # type: ignore[no-untyped-def]
    have = select(PatchFeatures.image_id).where(PatchFeatures.model_version == patch_version)
    q = select(SupportImage.id).where(SupportImage.id.not_in(have))
    if good_only:
        q = q.join(DefectClass, DefectClass.id == SupportImage.class_id).where(
            DefectClass.kind == "good")
    return q


def images_missing_patches(s: Session, patch_version: str, limit: int
                           ) -> Sequence[SupportImage]:
    """Images (good and defect) without patch features of this version, oldest first."""
    ids = _missing_patches(patch_version, good_only=False)
    return s.scalars(select(SupportImage).where(SupportImage.id.in_(ids))
                     .order_by(SupportImage.id).limit(limit)).all()


def count_images_missing_patches(s: Session, patch_version: str, good_only: bool = False
                                 ) -> int:
    """How many images lack patch features of this version (only good ones: those the
    patch memory cannot be built without)."""
    return int(s.scalar(select(func.count()).select_from(
        _missing_patches(patch_version, good_only).subquery())) or 0)


def drop_other_patch_versions(s: Session, patch_version: str) -> int:
    res = s.execute(delete(PatchFeatures).where(PatchFeatures.model_version != patch_version))
    return int(getattr(res, "rowcount", 0) or 0)


@dataclass(frozen=True)
class AnomalyOverrides:
    """A group's own good-parts settings; None: the service-wide one applies."""

    false_alarm_rate: float | None = None
    threshold_rule: str | None = None


def anomaly_overrides(s: Session, group: str | None = None) -> dict[str, AnomalyOverrides]:
    """Per-group overrides of the good-parts settings (groups without any are absent)."""
    q = select(GroupSetting)
    if group is not None:
        q = q.where(GroupSetting.group_name == group)
    return {r.group_name: AnomalyOverrides(r.false_alarm_rate, r.threshold_rule)
            for r in s.scalars(q)}


def set_anomaly_overrides(s: Session, group: str, rate: float | None, rule: str | None
                          ) -> None:
    row = s.get(GroupSetting, group)
    if row is None:
        s.add(GroupSetting(group_name=group, false_alarm_rate=rate, threshold_rule=rule))
    else:
        row.false_alarm_rate = rate
        row.threshold_rule = rule


# ---- classes ---------------------------------------------------------------------------


def get_class(s: Session, class_id: int) -> DefectClass | None:
    return s.get(DefectClass, class_id)


def find_class(s: Session, group: str, name: str) -> DefectClass | None:
    return s.scalar(
        select(DefectClass).where(DefectClass.group_name == group, DefectClass.name == name)
    )


def list_classes(s: Session, group: str | None = None) -> Sequence[DefectClass]:
    q = select(DefectClass).order_by(DefectClass.id)
    if group is not None:
        q = q.where(DefectClass.group_name == group)
    return s.scalars(q).all()


def image_counts(s: Session, class_ids: Iterable[int]) -> dict[int, int]:
    ids = list(class_ids)
    if not ids:
        return {}
    rows = s.execute(
        select(SupportImage.class_id, func.count(SupportImage.id))
        .where(SupportImage.class_id.in_(ids))
        .group_by(SupportImage.class_id)
    ).all()
    counts = dict.fromkeys(ids, 0)
    counts.update({cid: n for cid, n in rows})
    return counts


def delete_class(s: Session, cls: DefectClass) -> list[str]:
    """Delete a class and its images; return the sha256 of the removed images."""
    digests = list(s.scalars(select(SupportImage.sha256).where(SupportImage.class_id == cls.id)))
    s.delete(cls)
    return digests


# ---- images and embeddings ------------------------------------------------------------


def images_of_class(s: Session, class_id: int) -> Sequence[SupportImage]:
    return s.scalars(
        select(SupportImage).where(SupportImage.class_id == class_id).order_by(SupportImage.id)
    ).all()


def sha_in_class(s: Session, class_id: int, digests: Sequence[str]) -> set[str]:
    return set(
        s.scalars(
            select(SupportImage.sha256).where(
                SupportImage.class_id == class_id, SupportImage.sha256.in_(list(digests))
            )
        )
    )


def sha_referenced(s: Session, digest: str) -> bool:
    return bool(s.scalar(select(func.count()).where(SupportImage.sha256 == digest)))


def referenced_digests(s: Session, digests: set[str], chunk: int = 500) -> set[str]:
    """Which of `digests` a row still refers to: a support image (asked by index, in
    chunks), or else a classification result whose query image was kept as a blob before
    packs existed (`image_ref` is None). The results table grows without bound and has no
    index on sha256 (one would cost every classified image), so it is read only for
    digests no support image claims (crash orphans, pre-pack query images), streamed,
    never loaded whole."""
    found: set[str] = set()
    todo = sorted(digests)
    for i in range(0, len(todo), chunk):
        found.update(s.scalars(select(SupportImage.sha256)
                               .where(SupportImage.sha256.in_(todo[i:i + chunk]))))
    rest = digests - found
    if rest:
        legacy = (select(ClassificationResult.sha256)
                  .where(ClassificationResult.image_ref.is_(None))
                  .execution_options(yield_per=10_000))
        found.update(d for d in s.scalars(legacy) if d in rest)
    return found


def feedback_rows(s: Session, group: str | None) -> list[tuple[Feedback, ClassificationResult]]:
    q = select(Feedback, ClassificationResult).join(
        ClassificationResult, Feedback.result_id == ClassificationResult.id)
    if group is not None:
        q = q.where(ClassificationResult.group_name == group)
    return [(f, r) for f, r in s.execute(q.order_by(Feedback.id)).tuples()]


@dataclass(frozen=True)
class StoredEmbedding:
    image_id: int
    class_id: int
    vector: np.ndarray


def embeddings_for(
    s: Session, model_version: str, class_ids: Sequence[int] | None = None
) -> list[StoredEmbedding]:
    q = (
        select(SupportImage.id, SupportImage.class_id, Embedding.vector)
        .join(Embedding, Embedding.image_id == SupportImage.id)
        .where(Embedding.model_version == model_version)
        .order_by(SupportImage.id)
    )
    if class_ids is not None:
        q = q.where(SupportImage.class_id.in_(list(class_ids)))
    return [StoredEmbedding(i, c, bytes_to_vector(v)) for i, c, v in s.execute(q)]


def images_missing_version(s: Session, model_version: str, limit: int) -> Sequence[SupportImage]:
    have = select(Embedding.image_id).where(Embedding.model_version == model_version)
    return s.scalars(
        select(SupportImage).where(SupportImage.id.not_in(have)).order_by(SupportImage.id).limit(limit)
    ).all()


def count_images_missing_version(s: Session, model_version: str) -> int:
    have = select(Embedding.image_id).where(Embedding.model_version == model_version)
    return int(s.scalar(select(func.count()).where(SupportImage.id.not_in(have))) or 0)


def count_images_incomplete(s: Session, model_version: str, patch_version: str | None
                            ) -> int:
    """Images lacking an embedding of this version or (with a patch version) patch
    features of that version: each counted once."""
    lacking: ColumnElement[bool] = SupportImage.id.not_in(
        select(Embedding.image_id).where(Embedding.model_version == model_version))
    if patch_version is not None:
        lacking = or_(lacking, SupportImage.id.not_in(
            select(PatchFeatures.image_id).where(PatchFeatures.model_version == patch_version)))
    return int(s.scalar(select(func.count()).where(lacking)) or 0)


def drop_other_versions(s: Session, model_version: str) -> int:
    res = s.execute(delete(Embedding).where(Embedding.model_version != model_version))
    return int(getattr(res, "rowcount", 0) or 0)


# ---- replica coherence ---------------------------------------------------------------


def bump_group(s: Session, group: str) -> None:
    """Atomic upsert: version += 1 (works on SQLite and PostgreSQL)."""
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        ins = pg_insert(GroupVersion).values(group_name=group, version=1)
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        ins = sqlite_insert(GroupVersion).values(group_name=group, version=1)  # type: ignore[assignment]
    s.execute(ins.on_conflict_do_update(index_elements=["group_name"],
                                        set_={"version": GroupVersion.version + 1}))
    notify_change(s)


def group_version(s: Session, group: str) -> int | None:
    return s.scalar(select(GroupVersion.version).where(GroupVersion.group_name == group))


def group_versions(s: Session) -> dict[str, int]:
    return {g: v for g, v in s.execute(select(GroupVersion.group_name, GroupVersion.version))}


def push_targets(s: Session) -> Sequence[PushTarget]:
    return s.scalars(select(PushTarget)).all()


# ---- keys ------------------------------------------------------------------------------


def key_by_hash(s: Session, key_hash: str) -> ApiKey | None:
    return s.scalar(select(ApiKey).where(ApiKey.key_hash == key_hash))


def keys_stamp(s: Session) -> tuple[int, int, int]:
    """Moves whenever a key is created or revoked: (keys, revoked keys, highest id)."""
    row = s.execute(select(func.count(), func.count(ApiKey.revoked_at),
                           func.coalesce(func.max(ApiKey.id), 0))).one()
    return int(row[0]), int(row[1]), int(row[2])


def list_keys(s: Session) -> Sequence[ApiKey]:
    return s.scalars(select(ApiKey).order_by(ApiKey.id)).all()


def count_active_admins(s: Session) -> int:
    return int(
        s.scalar(
            select(func.count()).where(ApiKey.role == "admin", ApiKey.revoked_at.is_(None))
        )
        or 0
    )


def revoke_key(s: Session, key: ApiKey) -> None:
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        notify_change(s)


# ---- results, feedback, audit ------------------------------------------------------------


def get_result(s: Session, result_id: int) -> ClassificationResult | None:
    return s.get(ClassificationResult, result_id)


def audit(s: Session, actor: str, action: str, detail: str = "") -> None:
    s.add(AuditEvent(actor=actor, action=action, detail=detail[:4000]))


class ResultRow(TypedDict):
    """One classification result as the service hands it to storage (the columns of
    ClassificationResult; `image_ref` is added when the query image has been kept)."""

    group_name: str
    filename: str
    sha256: str
    class_id: int | None
    label: str | None
    unknown: bool
    score: float
    method: str
    model_version: str
    key_id: int | None
    image_ref: NotRequired[str | None]
    verdict: NotRequired[str | None]
    anomaly_score: NotRequired[float | None]
    anomaly_threshold: NotRequired[float | None]


def add_classifications(s: Session, rows: list[ResultRow], actors: str | list[str]
                        ) -> list[int]:
    """Insert classification results and their audit events (by `actors`, one per row or
    one for all) in two bulk statements; returns the new result ids in the order of
    `rows`."""
    who = [actors] * len(rows) if isinstance(actors, str) else actors
    # A class deleted while its images were being classified: the result keeps its label
    # text but refers to no class (class_id is a foreign key).
    named = {r["class_id"] for r in rows if r["class_id"] is not None}
    if named:
        alive = set(s.scalars(select(DefectClass.id).where(DefectClass.id.in_(named))))
        if alive != named:
            rows = [{**r, "class_id": None} if r["class_id"] not in alive else r
                    for r in rows]
    # Core inserts on the tables, not ORM bulk inserts on the classes: the same rows for
    # about half the Python work, and this runs for every classified image.
    results = cast(Table, ClassificationResult.__table__)
    ids = list(s.scalars(
        insert(results).returning(results.c.id, sort_by_parameter_order=True), rows))
    events = []
    for rid, r, actor in zip(ids, rows, who, strict=True):
        decision = "unknown" if r["unknown"] else f"class={r['class_id']}"
        events.append({
            "actor": actor, "action": "classify",
            "detail": (f"result={rid} group={r['group_name']} sha256={r['sha256']} "
                       f"model={r['model_version']} method={r['method']} "
                       f"decision={decision}")[:4000],
        })
    s.execute(insert(cast(Table, AuditEvent.__table__)), events)
    return ids


def list_audit(s: Session, offset: int, limit: int) -> Sequence[AuditEvent]:
    return s.scalars(select(AuditEvent).order_by(AuditEvent.id).offset(offset).limit(limit)).all()


# ---- results history ------------------------------------------------------------------------


@dataclass(frozen=True)
class ResultFilter:
    """Which results a history page shows; all optional. `feedback`: "none" (no verdict
    yet), "any", "correct" or "wrong" (by the latest feedback on the result)."""

    group: str | None = None
    label: str | None = None
    unknown: bool | None = None
    since: datetime | None = None
    until: datetime | None = None
    feedback: str | None = None
    # An OK/NG verdict exists only for results judged against good parts: asking for
    # one leaves out results from groups without good images.
    verdict: str | None = None
    # The groups a scoped key reaches (None: every group), beside `group`.
    groups: tuple[str, ...] | None = None


@dataclass(frozen=True)
class HistoryRow:
    result: ClassificationResult
    feedback_correct: bool | None  # the latest feedback's verdict, None without feedback
    feedback_class_id: int | None


def results_page(s: Session, f: ResultFilter, before_id: int | None, limit: int
                 ) -> list[HistoryRow]:
    """Newest first (by id, which only grows), at most `limit`, ids below `before_id`
    (keyset paging: a page costs the same at any depth).

    The page's ids come first, from results alone (each filter's index answers them
    index-only); then its rows and the latest feedback on each of them. Reading whole
    rows in the first query lets the planner walk the primary key backwards instead,
    filtering by group, which is a full scan of every newer row of other groups; joining
    the latest feedback per result would aggregate the whole feedback table per page."""
    r = ClassificationResult
    # Each index reaches one group's (and one feedback verdict's) newest ids in order; a
    # scoped key's groups, or feedback of either verdict, are merged from one walk per
    # value. Filtering a walk of every id instead reads every newer row of the others.
    pg = s.get_bind().dialect.name == "postgresql"
    parts = [_where(select(r.id), v, before_id, pg).order_by(*_newest_first(v, pg)).limit(limit)
             for v in _variants(f)]
    if not parts:
        return []
    if len(parts) == 1:
        q = parts[0]
    else:
        merged = union_all(*(select(p.subquery().c.id) for p in parts)).subquery()
        q = select(merged.c.id).order_by(merged.c.id.desc()).limit(limit)
    ids = list(s.scalars(q))
    if not ids:
        return []
    rows = {x.id: x for x in s.scalars(select(r).where(r.id.in_(ids)))}
    latest = latest_feedback(s, ids)
    # an id may be gone between the two reads (an archive deleting old rows)
    return [HistoryRow(rows[i], *latest.get(i, (None, None))) for i in ids if i in rows]


def _variants(f: ResultFilter) -> list[ResultFilter]:
    """`f` as filters of one group and one feedback verdict each, where it names several."""
    groups: list[str | None] = ([None] if f.group is not None or f.groups is None
                                else list(f.groups))
    verdicts = ["correct", "wrong"] if f.feedback == "any" else [f.feedback]
    return [replace(f, group=f.group if g is None else g,
                    groups=f.groups if g is None else None, feedback=v)
            for g in groups for v in verdicts]


def latest_feedback(s: Session, result_ids: Sequence[int]
                    ) -> dict[int, tuple[bool, int | None]]:
    """result id -> (correct, class id) of its latest feedback, for those that have one."""
    newest = (select(func.max(Feedback.id)).where(Feedback.result_id.in_(result_ids))
              .group_by(Feedback.result_id))
    q = select(Feedback.result_id, Feedback.correct, Feedback.class_id).where(
        Feedback.id.in_(newest))
    return {rid: (correct, cid) for rid, correct, cid in s.execute(q).tuples()}


# The columns of `stream_results`' rows, in order.
EXPORT_COLUMNS = ("id", "created_at", "group_name", "filename", "label", "class_id",
                  "unknown", "score", "method", "feedback_correct", "feedback_class_id",
                  "verdict", "anomaly_score", "anomaly_threshold")


def stream_results(s: Session, f: ResultFilter, before_id: int | None = None,
                   batch: int = 5000) -> Iterator[Sequence[tuple[Any, ...]]]:
    """Every matching result, newest first, as plain tuples (EXPORT_COLUMNS), `batch` at
    a time from one server-side cursor (PostgreSQL; SQLite steps its own): flat memory
    and one query, however many rows."""
    r = ClassificationResult
    # The group as a plain equality, ordered by id: with `_where`'s spelling for a page,
    # PostgreSQL plans this cursor for a fast start, a walk of the group's id index down
    # to a time window that reads every newer row of the group first.
    q = _history(select(r.id, r.created_at, r.group_name, r.filename, r.label, r.class_id,
                        r.unknown, r.score, r.method, Feedback.correct, Feedback.class_id,
                        r.verdict, r.anomaly_score, r.anomaly_threshold), f, before_id)
    result = s.execute(q.execution_options(stream_results=True, yield_per=batch))
    for part in result.partitions(batch):
        yield [tuple(row) for row in part]


def _window(f: ResultFilter) -> list[ColumnElement[bool]]:
    r = ClassificationResult
    conds = [] if f.group is None else [r.group_name == f.group]
    if f.groups is not None:
        conds.append(r.group_name.in_(f.groups))
    if f.since is not None:
        conds.append(r.created_at >= f.since)
    if f.until is not None:
        conds.append(r.created_at < f.until)
    return conds


def _window_ids(f: ResultFilter) -> list[ColumnElement[bool]]:
    """The lowest and highest id in the group's time window, read together from its time
    index, as bounds on the id: newest-first paging then starts inside the window instead
    of walking every newer id of the group down to it (ids and times rise together, but
    the planner cannot know it). `id + 0` keeps min / max an aggregate over the window's
    index entries rather than a walk of the id index looking for the first row inside it."""
    r = ClassificationResult
    bounds = select(func.min(r.id + 0).label("lo"), func.max(r.id + 0).label("hi")).where(
        *_window(f)).cte()  # anonymous: a merged page holds one per walk
    return [r.id >= select(bounds.c.lo).scalar_subquery(),
            r.id <= select(bounds.c.hi).scalar_subquery()]


def _history(q: Any, f: ResultFilter, before_id: int | None) -> Any:
    """`q` (over results, with their latest feedback's columns) filtered by `f`, below
    `before_id`, newest first: the export's one query, which reads every matching row."""
    latest = (select(Feedback.result_id, func.max(Feedback.id).label("fid"))
              .group_by(Feedback.result_id).subquery())
    q = (q.select_from(ClassificationResult)
         .outerjoin(latest, latest.c.result_id == ClassificationResult.id)
         .outerjoin(Feedback, Feedback.id == latest.c.fid))
    return _where(q, f, before_id, pg=False).order_by(*_newest_first(f, pg=False))


def _newest_first(f: ResultFilter, pg: bool) -> list[ColumnElement[Any]]:
    """Newest first; within one group on PostgreSQL, spelt (group, id): see `_where`."""
    r = ClassificationResult
    return [r.group_name.desc(), r.id.desc()] if pg and f.group is not None else [r.id.desc()]


def _where(q: Any, f: ResultFilter, before_id: int | None, pg: bool) -> Any:
    """`q` (over results) restricted to `f` and ids below `before_id`.

    On PostgreSQL the group is matched as `= ANY(ARRAY[group])` and the order spelt
    (group, id): written as `group = 'g'`, the planner drops the group from the order
    and may walk the primary key backwards, filtering by group, which reads every newer
    row of every other group (it expects the group's rows evenly spread, and a busy
    line's burst proves it wrong). Only the (group, …, id) indexes give this order."""
    r = ClassificationResult
    if f.group is not None:
        q = q.where(r.group_name == any_(array([f.group])) if pg else r.group_name == f.group)
    if f.groups is not None:
        q = q.where(r.group_name.in_(f.groups))
    if f.label is not None:
        q = q.where(r.label == f.label)
    if f.unknown is not None:
        q = q.where(r.unknown.is_(f.unknown))
    if f.since is not None or f.until is not None:
        q = q.where(*_window(f)).where(*_window_ids(f))
    if f.feedback == "none":
        q = q.where(r.feedback_correct.is_(None))
    elif f.feedback == "any":
        q = q.where(r.feedback_correct.is_not(None))
    elif f.feedback in ("correct", "wrong"):
        # IS NOT NULL spelt out: PostgreSQL writes "= false" as NOT, which it cannot see
        # implies the judged-only index's predicate
        q = q.where(r.feedback_correct.is_not(None),
                    r.feedback_correct == (f.feedback == "correct"))
    if f.verdict is not None:
        q = q.where(r.verdict == f.verdict)
    if before_id is not None:
        q = q.where(r.id < before_id)
    return q


# ---- idempotent requests ---------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """What claiming an idempotency key found: `response` (the first answer, to replay),
    `running` (claimed by a request still under way), `mismatch` (the key came with a
    different request); none of them: the caller now holds the claim."""

    response: str | None = None
    running: bool = False
    mismatch: bool = False


def add_idempotent(s: Session, scope: int, key: str, request_hash: str) -> None:
    """Claim (`scope`, `key`): an IntegrityError at commit means it was claimed before."""
    s.add(IdempotentRequest(key_scope=scope, idem_key=key, request_hash=request_hash))


def existing_idempotent(s: Session, scope: int, key: str, request_hash: str,
                        stale_before: datetime) -> Claim:
    """What a claimed (`scope`, `key`) holds. A claim left running since before
    `stale_before` (its server died) is taken over."""
    row = s.scalars(select(IdempotentRequest).where(
        IdempotentRequest.key_scope == scope, IdempotentRequest.idem_key == key)
        .with_for_update()).one_or_none()
    if row is None:  # released meanwhile: the caller may try again
        return Claim(running=True)
    if row.request_hash != request_hash:
        return Claim(mismatch=True)
    if row.response is not None:
        return Claim(response=row.response)
    if row.created_at >= stale_before:
        return Claim(running=True)
    row.created_at = utcnow()
    return Claim()


def finish_idempotent(s: Session, scope: int, key: str, response: str | None) -> None:
    """Keep the answer of a claimed request; `response` None: it failed, release the key
    so that a retry runs it."""
    q = (IdempotentRequest.key_scope == scope, IdempotentRequest.idem_key == key)
    if response is None:
        s.execute(delete(IdempotentRequest).where(*q, IdempotentRequest.response.is_(None)))
    else:
        row = s.scalars(select(IdempotentRequest).where(*q)).one_or_none()
        if row is not None:
            row.response = response


# How long the answer to an idempotent request is kept for its retries.
IDEMPOTENCY_KEEP = timedelta(days=1)


def prune_idempotent(s: Session, older_than: datetime) -> int:
    res = s.execute(delete(IdempotentRequest).where(IdempotentRequest.created_at < older_than))
    return int(res.rowcount or 0)  # type: ignore[attr-defined]
