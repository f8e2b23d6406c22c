"""Classify uploaded images against a group's immutable prototype snapshot."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import torch
from fastapi import UploadFile

from app.errors import Conflict, Unprocessable
from app.schemas import ClassifyResponse, Evidence, ModelInfo, Result, TopK
from app.services.keys import Principal
from app.services.prototypes import GroupSnapshot
from app.services.results import PendingResults
from app.services.runtime import Runtime
from app.services.uploads import decode_all, read_parts
from models.methods import FewShotMethod, MethodOutput, create_method
from models.methods.meta_base import MetaMethod
from models.methods.protonet import euclidean, score_from_distances

EVIDENCE_PER_CLASS = 3


def top_indices(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, best first, without sorting all C classes."""
    if k < scores.shape[0]:
        idx = np.argpartition(-scores, k - 1)[:k]
        return idx[np.argsort(-scores[idx], kind="stable")]
    return np.argsort(-scores, kind="stable")


def check_method(rt: Runtime, method: str | None) -> str:
    name = method or rt.settings.default_method
    if name not in rt.methods:
        raise Unprocessable(f"unknown method {name!r}; valid methods: {', '.join(rt.methods)}",
                            code="unknown_method")
    return name


def fitted_method(snap: GroupSnapshot, name: str, runtime: str = "onnxruntime"
                  ) -> FewShotMethod:
    """Fit once per (group, support-set version) and reuse: /classify never adapts."""
    m = snap.fitted.get(name)
    if m is None:
        support, labels = snap.support_matrix()
        fresh = create_method(name).fit(support, labels)
        if isinstance(fresh, MetaMethod) and runtime == "onnxruntime":
            fresh.compile_onnx()  # the per-query head runs in ONNX Runtime too
        m = snap.fitted.setdefault(name, fresh)
    return m


def predict(rt: Runtime, snap: GroupSnapshot, name: str, q: np.ndarray) -> MethodOutput:
    if name == "protonet":  # prototypes are already in the snapshot
        dist = euclidean(q, snap.prototypes, snap.proto_sq)
        return MethodOutput(score_from_distances(dist, rt.settings.temperature), dist)
    return fitted_method(snap, name, rt.settings.runtime).predict(q)


async def classify(
    rt: Runtime, files: list[UploadFile], group: str, top_k: int, method: str | None,
    threshold: float | None, evidence: bool, who: Principal,
) -> ClassifyResponse:
    assert rt.backbone is not None and rt.batcher is not None and rt.cache is not None
    t0 = time.perf_counter()
    name = check_method(rt, method)
    snap = rt.cache.snapshot(group)
    if snap is None:
        raise Conflict(f"group {group!r} has no classes with support images; enrol some first",
                       code="empty_group")
    parts = await read_parts(files, rt.settings)
    uploads = await decode_all(parts, rt.backbone.preprocess, rt.settings, rt.decode_pool)
    full = await rt.batcher.embed(np.stack([u.tensor for u in uploads]))
    q = np.ascontiguousarray(full[:, :rt.backbone.metric_dim])
    appearance = full[:, rt.backbone.metric_dim:]
    if name != "protonet" and name not in snap.fitted:
        # Adapt once per (group, support-set version), off the event loop.
        await asyncio.to_thread(fitted_method, snap, name, rt.settings.runtime)
    out = predict(rt, snap, name, q)
    # Rejection is always judged on prototype distance, whatever ranks the classes.
    proto_dist = (out.distances if name == "protonet"
                  else euclidean(q, snap.prototypes, snap.proto_sq))
    k = min(top_k, len(snap.entries))
    rows: list[tuple[list[TopK], bool, int, float]] = []
    for i in range(len(uploads)):
        order = top_indices(out.scores[i], k)
        tops = []
        for c in order:
            e = snap.entries[c]
            thr = float(threshold) if threshold is not None else float(snap.thresholds[c])
            ev = None
            if evidence:
                d = np.linalg.norm(e.support - q[i], axis=1)
                near = np.argsort(d)[:EVIDENCE_PER_CLASS]
                ev = [Evidence(image_id=e.image_ids[j], distance=round(float(d[j]), 5))
                      for j in near]
            tops.append(TopK(class_id=e.class_id, label=e.name,
                             score=round(float(out.scores[i, c]), 6),
                             distance=round(float(proto_dist[i, c]), 6),
                             threshold=round(thr, 6), evidence=ev))
        best = int(order[0])
        unknown = bool(proto_dist[i, best] > tops[0].threshold)
        if snap.app_prototypes is not None and snap.app_thresholds is not None \
                and threshold is None and not unknown:
            # Unlike the winning class's overall look: reject, whatever the ranking says.
            # Only the winner's distance is needed, so 10,000 classes cost no more here.
            d_app = float(np.linalg.norm(appearance[i] - snap.app_prototypes[best]))
            unknown = d_app > float(snap.app_thresholds[best])
        rows.append((tops, unknown, best, tops[0].score))
    # Off the event loop, committed together with concurrent requests' results.
    version = rt.backbone.version
    ids = await rt.results.submit(PendingResults(group, uploads, [
        {"group_name": group, "filename": u.filename, "sha256": u.sha256,
         "class_id": None if unk else tops[0].class_id,
         "label": None if unk else tops[0].label, "unknown": unk, "score": score,
         "method": name, "model_version": version, "key_id": who.key_id}
        for u, (tops, unk, _best, score) in zip(uploads, rows, strict=True)
    ], who.actor))
    results = [
        Result(id=rid, filename=u.filename, unknown=unk, score=score, top_k=tops,
               label=None if unk else snap.entries[best].name,
               class_id=None if unk else snap.entries[best].class_id)
        for rid, u, (tops, unk, best, score) in zip(ids, uploads, rows, strict=True)
    ]
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
    assert rt.backbone is not None and rt.batcher is not None
    if rt.siamese is None:
        raise Conflict(f"no Siamese model for {rt.backbone.version}", code="unavailable")
    parts = await read_parts([a, b], rt.settings)
    uploads = await decode_all(parts, rt.backbone.preprocess, rt.settings, rt.decode_pool)
    full = await rt.batcher.embed(np.stack([u.tensor for u in uploads]))
    z = torch.from_numpy(np.ascontiguousarray(full[:, :rt.backbone.metric_dim]))
    p = rt.siamese.same_probability(z[0], z[1])
    return p >= 0.5, p
