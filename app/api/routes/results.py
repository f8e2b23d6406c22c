"""Results history (operator, admin): JSON pages and a streamed CSV export."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import StreamingResponse

from app.api.deps import GroupFilter, IdPath, Operator, RuntimeDep
from app.errors import Unprocessable
from app.schemas import HistoryPage
from app.services import history as svc
from app.services import scope
from app.services.keys import Principal
from storage.repositories import ResultFilter

router = APIRouter(prefix="/api/v1", tags=["results"])

Label = Annotated[str | None, Query(min_length=1, max_length=128)]
Verdict = Annotated[Literal["ok", "defect"] | None, Query()]
FeedbackState = Annotated[Literal["none", "any", "correct", "wrong"] | None, Query()]
Cursor = Annotated[str | None, Query(max_length=32)]


def _filter(rt: RuntimeDep, who: Principal, group: str | None, label: str | None,
            unknown: bool | None, since: datetime | None, until: datetime | None,
            feedback: str | None, verdict: str | None) -> ResultFilter:
    for name, t in (("since", since), ("until", until)):
        if t is not None and t.tzinfo is None:
            raise Unprocessable(f"{name} needs a time zone (for example 2026-11-29T08:00:00Z)",
                                code="naive_time")
    if group is not None:
        scope.check_group(rt, who, group)
    return ResultFilter(group, label, unknown, since, until, feedback, verdict,
                        scope.allowed_groups(who))


@router.get("/results", response_model=HistoryPage)
def list_results(rt: RuntimeDep, who: Operator, group: GroupFilter = None, label: Label = None,
                 unknown: bool | None = None, since: datetime | None = None,
                 until: datetime | None = None, feedback: FeedbackState = None,
                 verdict: Verdict = None, cursor: Cursor = None,
                 limit: Annotated[int | None, Query(ge=1, le=1000)] = None) -> HistoryPage:
    """Classification results, newest first; `next_cursor` fetches the next page."""
    f = _filter(rt, who, group, label, unknown, since, until, feedback, verdict)
    return svc.page(rt, f, cursor, min(limit or rt.settings.page_size, rt.settings.page_size))


@router.get("/results.csv", response_class=StreamingResponse,
            responses={200: {"content": {"text/csv": {}}}})
def export_results(rt: RuntimeDep, who: Operator, group: GroupFilter = None, label: Label = None,
                   unknown: bool | None = None, since: datetime | None = None,
                   until: datetime | None = None, feedback: FeedbackState = None,
                   verdict: Verdict = None, cursor: Cursor = None) -> StreamingResponse:
    """The same filters as /results, every matching result as CSV, streamed."""
    f = _filter(rt, who, group, label, unknown, since, until, feedback, verdict)
    svc.parse_cursor(cursor)  # a bad cursor is a 422 before the stream starts
    return StreamingResponse(svc.csv_lines(rt, f, cursor), media_type="text/csv",
                             headers={"Content-Disposition": 'attachment; filename="results.csv"'})


@router.get("/results/{result_id}/image", response_class=Response,
            responses={200: {"content": {"image/jpeg": {}}}})
async def result_image(result_id: IdPath, rt: RuntimeDep, who: Operator,
                       size: Annotated[int, Query(ge=16, le=1024)] = 256) -> Response:
    """The classified image, kept by the service, as a JPEG no larger than size x size."""
    return Response(await svc.result_thumbnail(rt, result_id, size, who),
                    media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600"})


@router.get("/results/{result_id}/heatmap", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
async def result_heatmap(result_id: IdPath, rt: RuntimeDep, who: Operator) -> Response:
    """The kept image's anomaly heatmap against its group's good parts as enrolled now."""
    return Response(await svc.result_heatmap(rt, result_id, who), media_type="image/png",
                    headers={"Cache-Control": "no-store"})
