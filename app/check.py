"""`fsdi check`: how well a running service does on a folder of labelled images, measured
only through its REST API (the outside contract), as a factory or an independent check
would.

The folder holds one sub-folder per class, named as the class; the one named like
`good` (if any) is enrolled as the line's good parts (`kind: "good"`), every other one as
a defect class. For each shot count K, each episode draws K support and Q query images
per class (`models.data.episodes.EpisodeSampler`: the same episodes as `fsdi evaluate
--real` on a folder of the same images in the same order), enrols the support images into
a fresh group of their own, classifies the queries, and deletes the group's classes.
Measured: the label's accuracy (an unknown counts as wrong), the OK/NG verdict's accuracy
where a good class exists, and the expected calibration error of `score` against "the
label is right"; each with a 95% confidence interval over episodes.

The service keeps every classification in its results history; the check's groups are
named `<prefix>-<K>shot-<episode>` so they are easy to tell apart there.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from models import reporting
from models.calibration import expected_calibration_error, reliability
from models.data.episodes import EpisodeSampler
from models.progress import progress

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class CheckError(RuntimeError):
    """The folder cannot be checked, or the service refused a step (its message kept)."""


@dataclass(frozen=True)
class LabelledFolder:
    names: tuple[str, ...]  # class names, sorted; labels index into this
    paths: tuple[Path, ...]  # every image, class by class, each class's sorted by name
    labels: np.ndarray  # (N,) the class of each path
    good: str | None  # the good class's name, when the folder has one

    @classmethod
    def read(cls, root: Path, good: str = "good") -> LabelledFolder:
        if not root.is_dir():
            raise CheckError(f"{root} is not a folder")
        names: list[str] = []
        paths: list[Path] = []
        labels: list[int] = []
        for sub in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(p for p in sub.iterdir()
                           if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                continue
            labels += [len(names)] * len(files)
            names.append(sub.name)
            paths += files
        if len(names) < 2:
            raise CheckError(f"{root} needs at least two sub-folders of images (one per "
                             f"class); found {len(names)}")
        return cls(tuple(names), tuple(paths), np.asarray(labels, np.int64),
                   good if good in names else None)


@dataclass
class ShotResult:
    shots: int
    label: list[float] = field(default_factory=list)  # per episode
    verdict: list[float] = field(default_factory=list)  # per episode (with a good class)
    unknown: list[float] = field(default_factory=list)  # per episode
    scores: list[float] = field(default_factory=list)  # per query
    right: list[bool] = field(default_factory=list)  # per query: the label is right

    def rows(self, folder: str, n_way: int) -> list[reporting.Row]:
        ece = round(expected_calibration_error(np.asarray(self.scores),
                                               np.asarray(self.right)), 3)
        out = []
        for what, accs in (("label", self.label), ("OK/NG verdict", self.verdict)):
            if not accs:
                continue
            m, ci = reporting.mean_ci(accs)
            out.append({"benchmark": folder, "answer": what, "shots": self.shots,
                        "n_way": n_way, "episodes": len(accs), "accuracy": round(m, 4),
                        "ci95": round(ci, 4), "ece": ece if what == "label" else "–",
                        "unknown": round(float(np.mean(self.unknown)), 4)})
        return out


class Service:
    """The few contract calls a check makes, on any httpx client (base URL and key set)."""

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def _ok(self, r: httpx.Response, what: str) -> httpx.Response:
        if r.status_code >= 400:
            try:
                msg = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                msg = r.text[:200]
            raise CheckError(f"{what}: HTTP {r.status_code}: {msg}")
        return r

    def list_classes(self, group: str) -> list[dict]:  # type: ignore[type-arg]
        r = self._ok(self.client.get("/api/v1/classes", params={"group": group}),
                     f"listing the classes of group {group!r}")
        return list(r.json()["items"])

    def create_class(self, name: str, group: str, kind: str) -> int:
        r = self.client.post("/api/v1/classes", json={"name": name, "group": group,
                                                      "kind": kind})
        return int(self._ok(r, f"creating class {name!r}").json()["id"])

    def enrol(self, class_id: int, paths: Sequence[Path], batch: int) -> None:
        for chunk in _chunks(paths, batch):
            self._ok(self.client.post(f"/api/v1/classes/{class_id}/images",
                                      files=_files(chunk)), f"enrolling {len(chunk)} images")

    def classify(self, group: str, paths: Sequence[Path], batch: int) -> list[dict]:
        out: list[dict] = []
        for chunk in _chunks(paths, batch):
            r = self.client.post("/api/v1/classify", params={"group": group, "top_k": 1},
                                 files=_files(chunk))
            out += self._ok(r, f"classifying in group {group!r}").json()["results"]
        return out

    def delete_class(self, class_id: int) -> None:
        self._ok(self.client.delete(f"/api/v1/classes/{class_id}"),
                 f"deleting class {class_id}")


def _chunks(paths: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for i in range(0, len(paths), size):
        yield paths[i:i + size]


def _files(paths: Sequence[Path]) -> list[tuple[str, tuple[str, bytes]]]:
    """Multipart parts named `files`, as the contract's uploads take them."""
    return [("files", (p.name, p.read_bytes())) for p in paths]


def episodes(folder: LabelledFolder, shots: int, queries: int, count: int, seed: int
             ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(support, query) indices into `folder.paths`, `count` times, every class in each."""
    sampler = EpisodeSampler(folder.labels, len(folder.names), shots, queries, seed + shots)
    for _ in range(count):
        ep = sampler.sample()
        yield ep.support, ep.query


def run_check(service: Service, folder: LabelledFolder, shots: Sequence[int] = (1, 5, 10),
              count: int = 100, queries: int = 15, seed: int = 0, prefix: str | None = None,
              batch: int = 32) -> list[ShotResult]:
    """Every episode enrols, classifies and cleans up through `service`, `batch` files per
    request at most; a failure in an episode still deletes what that episode enrolled
    before it is raised."""
    counts = np.bincount(folder.labels, minlength=len(folder.names))
    need = max(shots) + queries
    short = [f"{n} ({c})" for n, c in zip(folder.names, counts, strict=True) if c < need]
    if short:
        raise CheckError(f"{max(shots)} shots and {queries} queries need {need} images in "
                         f"every class; too few in: {', '.join(short)}")
    prefix = prefix or f"fsdi-check-{secrets.token_hex(3)}"
    results = []
    for k in shots:
        res = ShotResult(k)
        # closed (and cleared) on the way out, also when a step fails
        with progress(list(episodes(folder, k, queries, count, seed)), desc=f"{k}-shot",
                  unit="episode", leave=False) as bar:
            for e, (support, query) in enumerate(bar):
                _episode(service, folder, res, f"{prefix}-{k}shot-{e}", support, query,
                         batch)
        results.append(res)
    return results


def _episode(service: Service, folder: LabelledFolder, res: ShotResult, group: str,
             support: np.ndarray, query: np.ndarray, batch: int) -> None:
    """One episode into `res`: enrol into `group`, classify, delete what was enrolled."""
    created: list[int] = []
    try:
        # Good classes first: the group's threshold then has both sides at once.
        for c in sorted(range(len(folder.names)), key=lambda c: folder.names[c] != folder.good):
            name = folder.names[c]
            cid = service.create_class(name, group, "good" if name == folder.good else "defect")
            created.append(cid)
            service.enrol(cid, [folder.paths[i] for i in support[folder.labels[support] == c]],
                          batch)
        got = service.classify(group, [folder.paths[i] for i in query], batch)
    finally:
        for cid in created:
            service.delete_class(cid)
    truth = [folder.names[c] for c in folder.labels[query]]
    right = [r["label"] == t and not r["unknown"] for r, t in zip(got, truth, strict=True)]
    res.label.append(float(np.mean(right)))
    res.unknown.append(float(np.mean([bool(r["unknown"]) for r in got])))
    res.scores += [float(r["score"]) for r in got]
    res.right += right
    if folder.good is not None:
        res.verdict.append(float(np.mean([(r.get("verdict") == "defect") == (t != folder.good)
                                          for r, t in zip(got, truth, strict=True)])))


def report(results: Sequence[ShotResult], folder: LabelledFolder, root: Path,
           out: Path) -> str:
    """Writes check.{json,md,png} (accuracy against shots) and check_reliability.png
    (accuracy against score, per shot count) under `out`; returns the Markdown table."""
    name = f"{root.name} ({len(folder.names)}-way: {', '.join(folder.names)})"
    rows = [r for res in results for r in res.rows(name, len(folder.names))]
    table = reporting.accuracy_table(rows, "benchmark", "answer",
                                     ("ECE of the score (per shot count)", "ece"))
    reporting.reliability_plot(
        {(root.name, f"{res.shots}-shot"): reliability(np.asarray(res.scores),
                                                       np.asarray(res.right))
         for res in results}, out / "check_reliability.png", "the label's score")
    return reporting.write(out / "check", rows, table, plot=("benchmark", "answer"))
