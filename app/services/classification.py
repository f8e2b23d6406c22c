"""Classify uploaded images against a group's immutable prototype snapshot."""

from __future__ import annotations

import asyncio
import base64
import time

import numpy as np
from fastapi import UploadFile

from app.errors import Conflict, NotFound, Unprocessable
from app.schemas import (
    AnomalyPublic,
    ClassifyResponse,
    Evidence,
    ModelInfo,
    Result,
    TopK,
    VerifyResponse,
)
from app.services import scope
from app.services.keys import Principal
from app.services.results import PendingResults
from app.services.runtime import Runtime
from app.services.uploads import Upload, decode_all, read_parts
from models.inference import Anomaly, Decision, EnrolledClass, GroupIndex, Inspection
from models.patchcore.anomaly_map import heatmap_png
from models.patchcore.memory import spread_search
from models.verify import MIN_PAIRS
from storage import repositories as repo


def check_method(rt: Runtime, method: str | None) -> str:
    name = method or rt.settings.default_method
    if name not in rt.methods:
        raise Unprocessable(f"unknown method {name!r}; valid methods: {', '.join(rt.methods)}",
                            code="unknown_method")
    return name


def top_k_of(index: GroupIndex | None, d: Decision | None) -> list[TopK]:
    if index is None or d is None:
        return []
    return [TopK(class_id=index.entries[c.index].class_id, label=index.entries[c.index].name,
                 score=round(c.score, 6), distance=round(c.distance, 6),
                 threshold=round(c.threshold, 6),
                 evidence=None if c.evidence is None else [
                     Evidence(image_id=i, distance=round(dist, 5)) for i, dist in c.evidence])
            for c in d.top]


def _score(i: Inspection) -> float:
    """The probability that the answer is right (models.inference.Inspection.score: the
    group's calibrated class score, times the verdict's probability where the group can
    say it). A rejected result names no class, so it claims none: 0 (its `top_k` still
    ranks the candidates)."""
    return round(i.score, 6)


def _anomaly(a: Anomaly | None) -> AnomalyPublic | None:
    if a is None:
        return None
    return AnomalyPublic(score=round(a.score, 6), threshold=round(a.threshold, 6),
                         anomalous=a.anomalous)


def _heatmap(i: Inspection, u: Upload) -> str | None:
    if i.anomaly is None:
        return None
    png = heatmap_png(i.anomaly.patch_map, i.anomaly.threshold, u.width, u.height)
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _decide(rt: Runtime, group: str, full: np.ndarray, top_k: int, name: str,
            threshold: float | None, evidence: bool) -> list[Inspection]:
    served = rt.cache.served(group)
    if served is None:  # deleted while the images were embedded
        raise Conflict(f"group {group!r} has no classes with support images", code="empty_group")
    # Each index fits the method it is asked for once, when first asked (GroupIndex.method).
    embeddings, patches = rt.unpack(full)
    if rt.batcher.queued_images:  # forward passes hold the cores: search on this one
        return served.inspect(embeddings, patches, top_k, name, threshold, evidence)
    with spread_search():  # nothing else runs: the patch search takes every core
        return served.inspect(embeddings, patches, top_k, name, threshold, evidence)


async def classify(
    rt: Runtime, files: list[UploadFile], group: str, top_k: int, method: str | None,
    threshold: float | None, evidence: bool, who: Principal, heatmap: bool = False,
    parts: list[tuple[str, bytes]] | None = None,
) -> ClassifyResponse:
    """read -> decode -> embed -> decide (models.inference) -> store -> respond. `parts`:
    the files already read (name, bytes), where the caller needed them first."""
    t0 = time.perf_counter()
    name = check_method(rt, method)
    if rt.cache.served(group) is None:
        raise Conflict(f"group {group!r} has no classes with support images; enrol some first",
                       code="empty_group")
    if parts is None:
        parts = await read_parts(files, rt.settings)
    uploads = await decode_all(parts, rt.backbone.preprocess, rt.settings, rt.decode_pool)
    full = await rt.batcher.embed(np.stack([u.tensor for u in uploads]))
    # The patch search and any first fitting of a method run off the event loop.
    inspections = await asyncio.to_thread(_decide, rt, group, full, top_k, name, threshold,
                                          evidence)
    version = rt.backbone.version
    entries = [i.entry for i in inspections]
    # Off the event loop, committed together with concurrent requests' results.
    ids = await rt.results.submit(PendingResults(group, uploads, [
        {"group_name": group, "filename": u.filename, "sha256": u.sha256,
         "class_id": e.class_id if e else None, "label": e.name if e else None,
         "unknown": i.unknown, "score": _score(i), "method": name,
         "model_version": version, "key_id": who.key_id, "verdict": i.verdict,
         "anomaly_score": None if i.anomaly is None else round(i.anomaly.score, 6),
         "anomaly_threshold": None if i.anomaly is None else round(i.anomaly.threshold, 6)}
        for u, i, e in zip(uploads, inspections, entries, strict=True)],
        who.actor))
    maps = (await asyncio.to_thread(lambda: [_heatmap(i, u) for i, u in
                                             zip(inspections, uploads, strict=True)])
            if heatmap else [None] * len(uploads))
    results = [
        Result(id=rid, filename=u.filename, unknown=i.unknown, score=_score(i),
               top_k=top_k_of(i.index, i.decision), label=e.name if e else None,
               class_id=e.class_id if e else None, anomaly=_anomaly(i.anomaly),
               verdict=i.verdict, heatmap=hm)  # type: ignore[arg-type]
        for rid, u, i, e, hm in zip(ids, uploads, inspections, entries, maps, strict=True)]
    response = ClassifyResponse(results=results, model=ModelInfo(
        backbone=rt.backbone.name, method=name, version=version,
        runtime=rt.embedder.runtime if rt.embedder else "none"))
    if rt.opcua is not None:
        await rt.opcua.publish(group, results)
    if rt.pusher.wants(group):
        rt.pusher.submit(group, {"group": group, **response.model_dump(mode="json")})
    m = rt.metrics
    m.images_classified.labels(group).inc(len(results))
    m.unknown.labels(group).inc(sum(r.unknown for r in results))
    for v in ("ok", "defect"):
        n = sum(r.verdict == v for r in results)
        if n:
            m.verdicts.labels(group, v).inc(n)
    m.classify_latency.observe(time.perf_counter() - t0)
    return response


async def verify(rt: Runtime, a: UploadFile, b: UploadFile, group: str | None,
                 who: Principal) -> VerifyResponse:
    """Are images a and b the same class? The Siamese pair logit, calibrated on `group`'s
    own enrolment where it is large enough (models.verify), else globally."""
    if rt.siamese is None:
        raise Conflict(f"no Siamese model for {rt.backbone.version}", code="unavailable")
    served = None
    if group is not None:
        scope.check_group(rt, who, group)
        served = rt.cache.served(group)
        if served is None:
            raise NotFound(f"group {group!r} not found")
    parts = await read_parts([a, b], rt.settings)
    uploads = await decode_all(parts, rt.backbone.preprocess, rt.settings, rt.decode_pool)
    for u in uploads:
        if float(np.ptp(u.tensor)) == 0.0:
            raise Unprocessable(f"{u.filename}: the image is blank (one colour): there is "
                                "nothing to compare", code="blank_image")
    full, patches = rt.unpack(await rt.batcher.embed(np.stack([u.tensor for u in uploads])))
    verifier = rt.siamese
    cal = None
    if group is not None and served is not None:
        cal = await asyncio.to_thread(verifier.calibration, group, served,
                                      lambda: enrolled_classes(rt, group),
                                      lambda ids: enrolled_patches(rt, ids))
    warning = None
    if group is not None and cal is None:
        warning = (f"group {group!r} is too small to calibrate verification (it needs "
                   f"{MIN_PAIRS} pairs of images of one class and {MIN_PAIRS} of two "
                   "classes): the global calibration decided")
    p = await asyncio.to_thread(verifier.probability, full[0], full[1], served, cal, patches)
    return VerifyResponse(same=p >= 0.5, score=round(p, 6),
                          calibration="global" if cal is None else "group", warning=warning)


def enrolled_patches(rt: Runtime, image_ids: list[int]) -> dict[int, np.ndarray]:
    """These enrolled images' patch features (this backbone's), by image id."""
    version = rt.backbone.patch_version if rt.backbone.patch_layers else None
    if version is None:
        return {}
    with rt.sessions() as s:
        return {p.image_id: p.patches for p in repo.patches_for_images(s, version, image_ids)}


def enrolled_classes(rt: Runtime, group: str) -> list[EnrolledClass]:
    """The group's classes with their stored vectors (this backbone's), by id."""
    with rt.sessions() as s:
        classes = {c.id: c for c in repo.list_classes(s, group)}
        vectors: dict[int, list[tuple[int, np.ndarray]]] = {}
        for e in repo.embeddings_for(s, rt.backbone.version, list(classes)):
            vectors.setdefault(e.class_id, []).append((e.image_id, e.vector))
    return [EnrolledClass(cid, classes[cid].name, classes[cid].kind,
                          tuple(i for i, _ in rows), np.stack([v for _, v in rows]))
            for cid, rows in sorted(vectors.items())]
