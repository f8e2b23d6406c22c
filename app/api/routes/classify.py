"""Classification and operator feedback."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, File, Header, Query, UploadFile
from fastapi.responses import JSONResponse, Response

from app.api.deps import (
    Admin,
    Classifier,
    GroupFilter,
    GroupQuery,
    IdPath,
    Operator,
    RuntimeDep,
)
from app.errors import Conflict, Unprocessable
from app.schemas import (
    TOP_K_LIMIT,
    ClassifyResponse,
    EnrolResponse,
    FeedbackCreate,
    FeedbackPublic,
    FeedbackStats,
    VerifyResponse,
)
from app.services import classification as svc
from app.services import feedback as fb_svc
from app.services import idempotency as idem
from app.services import scope
from app.services.uploads import read_parts

router = APIRouter(prefix="/api/v1", tags=["classify"])


@router.post("/classify", response_model=ClassifyResponse)
async def classify(
    rt: RuntimeDep, who: Classifier, files: Annotated[list[UploadFile], File()],
    group: GroupQuery = "default",
    top_k: Annotated[int, Query(ge=1, le=TOP_K_LIMIT, description=(
        "nearest classes listed per image; above FSDI_MAX_TOP_K (default 20) -> 422"))] = 3,
    method: Annotated[str | None, Query(max_length=32)] = None,
    threshold: Annotated[float | None, Query(gt=0, le=4)] = None,
    evidence: bool = False,
    heatmap: Annotated[bool, Query(description=(
        "add each image's anomaly heatmap (grey PNG data URL) in groups with good images"
    ))] = False,
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:~+/=-]+$",
        description="a retry with the same key (and the same request) gets the first "
        "answer back instead of classifying again (kept a day, per API key)")] = None,
) -> Response:
    """Classify each uploaded image; `threshold` overrides every class's calibrated
    rejection distance; `evidence=true` adds the nearest support images per class. In a
    group with good images each result also carries `anomaly` and the OK/NG `verdict`."""
    scope.check_group(rt, who, group)
    if top_k > rt.settings.max_top_k:
        raise Unprocessable(f"top_k must be at most {rt.settings.max_top_k} (FSDI_MAX_TOP_K)",
                            code="top_k_too_large")
    if idempotency_key is None:
        out = await svc.classify(rt, files, group, top_k, method, threshold, evidence, who,
                                 heatmap)
        # Built and typed by the service already: serialise once, skip re-validation.
        return Response(out.model_dump_json(), media_type="application/json")
    parts = await read_parts(files, rt.settings)
    asked = idem.fingerprint(group, {"top_k": top_k, "method": method, "threshold": threshold,
                                     "evidence": evidence, "heatmap": heatmap}, parts)
    got = await asyncio.to_thread(idem.claim, rt, who, idempotency_key, asked)
    if got.mismatch:
        raise Unprocessable("this Idempotency-Key was sent before with a different request "
                            "(group, options or files)", code="idempotency_key_reused")
    if got.running:
        raise Conflict("a request with this Idempotency-Key is still running; retry in a "
                       "moment", code="in_progress", headers={"Retry-After": "1"})
    if got.response is not None:
        return Response(got.response, media_type="application/json",
                        headers={"Idempotent-Replayed": "true"})
    try:
        body = (await svc.classify(rt, files, group, top_k, method, threshold, evidence, who,
                                   heatmap, parts)).model_dump_json()
    except BaseException:
        await asyncio.to_thread(idem.finish, rt, who, idempotency_key, None)
        raise
    await asyncio.to_thread(idem.finish, rt, who, idempotency_key, body)
    return Response(body, media_type="application/json")


@router.post("/verify", response_model=VerifyResponse)
async def verify(rt: RuntimeDep, who: Classifier, a: Annotated[UploadFile, File()],
                 b: Annotated[UploadFile, File()], group: GroupFilter = None
                 ) -> VerifyResponse:
    """Are images a and b the same class? The Siamese model's pair decision; `score` is
    the probability of "same", calibrated on `group`'s own enrolled classes where it has
    enough of them, else on the meta-training sources (`calibration` says which)."""
    return await svc.verify(rt, a, b, group, who)


@router.get("/feedback/stats", response_model=FeedbackStats)
def feedback_stats(rt: RuntimeDep, who: Operator,
                   group: GroupFilter = None) -> FeedbackStats:
    """Feedback counts and the (predicted, true) confusion cells, most frequent first."""
    return fb_svc.stats(rt, group, who)


@router.post("/feedback/{feedback_id}/promote", status_code=201)
async def promote_feedback(feedback_id: IdPath, rt: RuntimeDep, who: Admin) -> JSONResponse:
    """Add the image behind a feedback to the support set of its right class."""
    images, cls = await fb_svc.promote(rt, feedback_id, who)
    body = EnrolResponse(images=images, class_=cls).model_dump(mode="json", by_alias=True)
    return JSONResponse(body, status_code=201)


@router.post("/feedback", status_code=201, response_model=FeedbackPublic)
def create_feedback(body: FeedbackCreate, rt: RuntimeDep, who: Operator) -> FeedbackPublic:
    """An operator's verdict on a result (`class_id`: the right class when wrong)."""
    return fb_svc.record(rt, body, who)
