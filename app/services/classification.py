"""Classify uploaded images against a group's immutable prototype snapshot."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from fastapi import UploadFile

from app.errors import Conflict, Unprocessable
from app.schemas import ClassifyResponse, Evidence, ModelInfo, Result, TopK
from app.services.keys import Principal
from app.services.results import PendingResults
from app.services.runtime import Runtime
from app.services.uploads import decode_all, read_parts
from models.inference import Decision, GroupIndex


def check_method(rt: Runtime, method: str | None) -> str:
    name = method or rt.settings.default_method
    if name not in rt.methods:
        raise Unprocessable(f"unknown method {name!r}; valid methods: {', '.join(rt.methods)}",
                            code="unknown_method")
    return name


def top_k_of(index: GroupIndex, d: Decision) -> list[TopK]:
    return [TopK(class_id=index.entries[c.index].class_id, label=index.entries[c.index].name,
                 score=round(c.score, 6), distance=round(c.distance, 6),
                 threshold=round(c.threshold, 6),
                 evidence=None if c.evidence is None else [
                     Evidence(image_id=i, distance=round(dist, 5)) for i, dist in c.evidence])
            for c in d.top]


async def classify(
    rt: Runtime, files: list[UploadFile], group: str, top_k: int, method: str | None,
    threshold: float | None, evidence: bool, who: Principal,
) -> ClassifyResponse:
    """read -> decode -> embed -> decide (models.inference) -> store -> respond."""
    t0 = time.perf_counter()
    name = check_method(rt, method)
    index = rt.cache.snapshot(group)
    if index is None:
        raise Conflict(f"group {group!r} has no classes with support images; enrol some first",
                       code="empty_group")
    parts = await read_parts(files, rt.settings)
    uploads = await decode_all(parts, rt.backbone.preprocess, rt.settings, rt.decode_pool)
    full = await rt.batcher.embed(np.stack([u.tensor for u in uploads]))
    if name not in index.fitted:  # adapt once per (group, support-set version), off the loop
        await asyncio.to_thread(index.method, name)
    decisions = index.decide(full, top_k, name, threshold, evidence)
    version = rt.backbone.version
    labelled = [(d, None if d.unknown else index.entries[d.best.index]) for d in decisions]
    # Off the event loop, committed together with concurrent requests' results.
    ids = await rt.results.submit(PendingResults(group, uploads, [
        {"group_name": group, "filename": u.filename, "sha256": u.sha256,
         "class_id": e.class_id if e else None, "label": e.name if e else None,
         "unknown": d.unknown, "score": round(d.best.score, 6), "method": name,
         "model_version": version, "key_id": who.key_id}
        for u, (d, e) in zip(uploads, labelled, strict=True)], who.actor))
    results = [
        Result(id=rid, filename=u.filename, unknown=d.unknown, score=round(d.best.score, 6),
               top_k=top_k_of(index, d), label=e.name if e else None,
               class_id=e.class_id if e else None)
        for rid, u, (d, e) in zip(ids, uploads, labelled, strict=True)]
    response = ClassifyResponse(results=results, model=ModelInfo(
        backbone=rt.backbone.name, method=name, version=version,
        runtime=rt.embedder.runtime if rt.embedder else "none"))
    if rt.pusher.wants(group):
        rt.pusher.submit(group, {"group": group, **response.model_dump(mode="json")})
    m = rt.metrics
    m.images_classified.labels(group).inc(len(results))
    m.unknown.labels(group).inc(sum(r.unknown for r in results))
    m.classify_latency.observe(time.perf_counter() - t0)
    return response


async def verify(rt: Runtime, a: UploadFile, b: UploadFile) -> tuple[bool, float]:
    """Siamese same/different decision for two images."""
    if rt.siamese is None:
        raise Conflict(f"no Siamese model for {rt.backbone.version}", code="unavailable")
    parts = await read_parts([a, b], rt.settings)
    uploads = await decode_all(parts, rt.backbone.preprocess, rt.settings, rt.decode_pool)
    full = await rt.batcher.embed(np.stack([u.tensor for u in uploads]))
    p = rt.siamese.same_probability(full[0, :rt.backbone.metric_dim],
                                    full[1, :rt.backbone.metric_dim])
    return p >= 0.5, p
