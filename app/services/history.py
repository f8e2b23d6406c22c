"""Results history: newest first, filtered, paged by an opaque cursor; and the same as CSV,
streamed a page at a time (flat memory, however many results match)."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from typing import Any

from app.errors import NotFound, Unprocessable
from app.schemas import AnomalyPublic, HistoryItem, HistoryPage, ResultFeedback
from app.services import scope
from app.services.keys import Principal
from app.services.runtime import Runtime
from models.patchcore.memory import MAX_DISTANCE
from storage import repositories as repo
from storage.repositories import HistoryRow, ResultFilter

CSV_COLUMNS = ("id", "created_at", "group", "filename", "label", "class_id", "unknown",
               "score", "method", "feedback_correct", "feedback_class_id", "verdict",
               "anomaly_score", "anomaly_threshold")


def cursor_of(result_id: int) -> str:
    return f"r{result_id}"


def parse_cursor(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    if not (cursor.startswith("r") and cursor[1:].isdigit() and len(cursor) < 12):
        raise Unprocessable("cursor is not one this service handed out", code="bad_cursor")
    return int(cursor[1:])


def item(h: HistoryRow) -> HistoryItem:
    r = h.result
    fb = (None if h.feedback_correct is None
          else ResultFeedback(correct=h.feedback_correct, class_id=h.feedback_class_id))
    anomaly = None
    if r.anomaly_score is not None:
        thr = r.anomaly_threshold if r.anomaly_threshold is not None else MAX_DISTANCE
        anomaly = AnomalyPublic(score=r.anomaly_score, threshold=thr,
                                anomalous=r.anomaly_score > thr)
    return HistoryItem(id=r.id, created_at=r.created_at, group=r.group_name, filename=r.filename,
                       label=r.label, class_id=r.class_id, unknown=r.unknown,
                       score=r.score, method=r.method, feedback=fb,
                       verdict=r.verdict, anomaly=anomaly)  # type: ignore[arg-type]


def page(rt: Runtime, f: ResultFilter, cursor: str | None, limit: int) -> HistoryPage:
    with rt.sessions() as s:
        rows = repo.results_page(s, f, parse_cursor(cursor), limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return HistoryPage(items=[item(h) for h in rows],
                       next_cursor=cursor_of(rows[-1].result.id) if more and rows else None)


def csv_lines(rt: Runtime, f: ResultFilter, cursor: str | None = None) -> Iterator[str]:
    """The header, then the matching results, newest first, from one streaming query
    (storage.repositories.stream_results): each chunk is thousands of lines, so the
    response's thread hops and writes are per chunk, not per line."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    yield buf.getvalue()
    with rt.sessions() as s:
        for rows in repo.stream_results(s, f, parse_cursor(cursor)):
            buf.seek(0)
            buf.truncate()
            writer.writerows(_csv_row(r) for r in rows)
            yield buf.getvalue()


def _csv_row(r: tuple[Any, ...]) -> tuple[object, ...]:
    (rid, at, group, filename, label, class_id, unknown, score, method, fb_correct,
     fb_class, verdict, a_score, a_thr) = r
    return (rid, at.isoformat(), group, filename, label or "",
            "" if class_id is None else class_id, "true" if unknown else "false", score,
            method, "" if fb_correct is None else ("true" if fb_correct else "false"),
            "" if fb_class is None else fb_class, verdict or "",
            "" if a_score is None else a_score, "" if a_thr is None else a_thr)


def _kept(rt: Runtime, result_id: int, who: Principal) -> tuple[bytes, str]:
    """The kept image of a result and its group; 404 when either is gone (or the result
    is in a group out of the key's reach)."""
    from app.services.feedback import kept_image

    with rt.sessions() as s:
        res = repo.get_result(s, result_id)
        if res is None:
            raise NotFound(f"result {result_id} not found")
        scope.check(rt, who, res.group_name, f"result {result_id} not found")
        sha, ref, group = res.sha256, res.image_ref, res.group_name
    data = kept_image(rt, sha, ref)
    if data is None:
        raise NotFound(f"the image of result {result_id} was not kept (FSDI_KEEP_QUERY_IMAGES, "
                       "the retention period, or a disk that refused it)",
                       code="image_not_kept")
    return data, group


async def result_thumbnail(rt: Runtime, result_id: int, size: int, who: Principal) -> bytes:
    """The classified image as a JPEG no larger than size x size."""
    from app.services.console import jpeg_thumbnail

    data, _ = await asyncio.to_thread(_kept, rt, result_id, who)
    return await asyncio.get_running_loop().run_in_executor(
        rt.decode_pool, jpeg_thumbnail, data, size, rt.settings.max_image_pixels)


async def result_heatmap(rt: Runtime, result_id: int, who: Principal) -> bytes:
    """The kept image's heatmap against its group's good parts as enrolled now (grey PNG,
    the contract's format)."""
    from app.services.uploads import decode_all
    from models.patchcore.anomaly_map import heatmap_png

    data, group = await asyncio.to_thread(_kept, rt, result_id, who)
    served = rt.cache.served(group)
    if served is None or served.good_parts is None:
        raise NotFound(f"group {group!r} has no good images to compare with",
                       code="no_good_parts")
    (u,) = await decode_all([("kept", data)], rt.backbone.preprocess, rt.settings,
                            rt.decode_pool)
    _, patches = rt.unpack(await rt.batcher.embed(u.tensor[None]))
    if patches is None:
        raise NotFound(f"{rt.backbone.name} serves no patch features", code="no_good_parts")
    (a,) = await asyncio.to_thread(served.anomalies, patches)
    return await asyncio.to_thread(heatmap_png, a.patch_map, a.threshold, u.width, u.height)
