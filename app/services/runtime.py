"""Everything the service holds in memory, built in the start-up order:
migrations -> weights loaded safely -> prototype cache built -> ready."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from app.errors import NotReady
from app.services.batcher import MicroBatcher
from app.services.keys import KeyCache, bootstrap_admin
from app.services.metrics import Metrics
from app.services.prototypes import PrototypeCache
from app.services.push import Pusher, Target
from app.services.results import GroupCommit, PendingResults, ResultStore, write_results
from app.services.threadnames import name_this_thread
from app.settings import Settings
from models.backbones import Backbone
from models.embedder import Embedder, make_embedder, unpack
from models.inference import EmbeddingLayout, EnrolledClass, ServedGroup, ServingConfig
from models.methods import available_methods, usable_methods
from models.patchcore.memory import set_search_threads
from models.verify import (
    Calibration,
    PairModel,
    group_calibration,
    load_global,
    same_probability,
    seen,
)
from models.zoo import create_backbone, describe_backbone
from storage import repositories as repo
from storage.archive import prune_results
from storage.migrate import open_migrated
from storage.objects import StoreUnavailable
from storage.stores import open_stores

if TYPE_CHECKING:
    from app.services.opcua import LineServer

log = logging.getLogger("fsdi")


def layout_for(bb: Backbone, s: Settings) -> EmbeddingLayout:
    return s.serving_config().layout(bb.metric_dim, bb.dim)


T = TypeVar("T")
# The groups whose /verify calibration a replica keeps (the most recently verified).
KEPT_CALIBRATIONS = 16


def _built(part: T | None, missing: str) -> T:
    """A part of the state that start-up builds; a 503 when asked for before that."""
    if part is None:
        raise NotReady(f"{missing}; retry shortly", headers={"Retry-After": "2"})
    return part


class Verifier:
    """Same or different (models.verify). In a group large enough to calibrate: the two
    images' probability of falling in one of its classes, calibrated on its own
    enrolment; else the Siamese pair logit, calibrated globally. A group's calibration is
    computed on its first /verify after each change (from the stored vectors, so every
    replica computes the same) and kept until the group's served snapshot changes, for
    the `kept` groups verified most recently (a calibration that ranks a group on its
    surface holds patch memories, megabytes: a replica serving many groups must not
    keep one for each of them; an evicted one is computed again when asked)."""

    def __init__(self, config: ServingConfig, metric_dim: int, kept: int = KEPT_CALIBRATIONS
                 ) -> None:
        self.model = PairModel()
        self.global_calibration = load_global()
        self.config, self.metric_dim, self.kept = config, metric_dim, kept
        # group -> (its snapshot, weakly: a replaced one is not kept alive; calibration),
        # the least recently verified first
        self._groups: OrderedDict[str, tuple[weakref.ref[ServedGroup], Calibration | None]] \
            = OrderedDict()
        self._lock = threading.Lock()

    def calibration(self, group: str, served: ServedGroup,
                    read: Callable[[], list[EnrolledClass]],
                    patches_of: Callable[[list[int]], dict[int, np.ndarray]] | None = None
                    ) -> Calibration | None:
        """The group's own calibration (None: too small to calibrate); `read` gives its
        enrolled classes, `patches_of` their images' patch features (for the verdict's
        part in a group with good parts)."""
        with self._lock:
            known = self._groups.get(group)
            if known is not None and known[0]() is served:
                self._groups.move_to_end(group)
                return known[1]
        cal = group_calibration(read(), self.metric_dim, self.config, served=served,
                                patches_of=patches_of)
        with self._lock:
            self._groups[group] = (weakref.ref(served), cal)
            self._groups.move_to_end(group)
            while len(self._groups) > self.kept:
                self._groups.popitem(last=False)
        return cal

    def probability(self, a: np.ndarray, b: np.ndarray, served: ServedGroup | None,
                    cal: Calibration | None, patches: np.ndarray | None = None) -> float:
        """p(same) for two full embeddings (and their patch features): on the group's
        classes with its own `cal` (and the verdict, where it has one), else the Siamese
        pair logit with the global calibration."""
        if served is not None and cal is not None:
            post, looks = seen(served, cal, np.stack([a, b]), patches, self.metric_dim)
            return float(same_probability(cal, post, looks, np.array([0]), np.array([1]))[0])
        z = self.model.logits(a[None, :self.metric_dim], b[None, :self.metric_dim])
        return float(self.global_calibration.probability(z[0, 0]))


@dataclass(frozen=True)
class Loaded:
    """What start-up builds after the database: all of it, or none of it."""

    backbone: Backbone
    embedder: Embedder
    cache: PrototypeCache
    siamese: Verifier | None  # None: this backbone has no Siamese weights


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.ready = threading.Event()
        self.failed: str | None = None
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self.blobs, self.packs = open_stores(settings.blob_url, settings.data_dir,
                                             settings.s3_endpoint_url)
        self._loaded: Loaded | None = None
        # Work that outlives the request that started it (a capped memory's rebuild after
        # a deletion): held here so that it is not collected before it ends.
        self.background: set[asyncio.Future[None]] = set()
        self._deps_lock = threading.Lock()
        self._deps_done = threading.Condition()
        self._deps_at = -1e9
        self._deps_checking = False
        self._deps: dict[str, str] = {}
        self.decode_pool = ThreadPoolExecutor(settings.decode_workers,
                                              thread_name_prefix="fsdi-decode",
                                              initializer=name_this_thread)
        self.methods = available_methods()
        self._seen_versions: dict[str, int] = {}
        self.pusher = Pusher(settings, self.metrics.push)
        self.opcua: LineServer | None = None  # the OPC UA server, when FSDI_OPCUA_URL is set
        self.key_cache = KeyCache(settings.key_cache_s)
        self.results: GroupCommit[PendingResults, list[int]] = GroupCommit(
            self._write_results, name="fsdi-results")
        s = settings
        # Every forward pass returns the embedding and the patch features together
        # (models.embedder.unpack), so a group with good parts costs no second pass.
        self.batcher = MicroBatcher(self._forward, s.batch_max_size,
                                    s.batch_max_wait_ms, s.queue_max_images,
                                    self.metrics.batch_size.observe, streams=s.streams,
                                    embed_alone=self._forward_alone)
        self._push_lock = threading.Lock()
        self._push_generation = 0
        if settings.default_method not in self.methods:
            raise ValueError(f"FSDI_DEFAULT_METHOD={settings.default_method!r} is not one of "
                             f"{', '.join(self.methods)}")

    # -- the built state: typed, never None; asked for before it is built -> 503 ---------
    @property
    def engine(self) -> Engine:
        return _built(self._engine, "the database is not open yet")

    @property
    def sessions(self) -> sessionmaker[Session]:
        return _built(self._sessions, "the database is not open yet")

    @property
    def loaded(self) -> Loaded:
        return _built(self._loaded, "the service is starting")

    @property
    def backbone(self) -> Backbone:
        return self.loaded.backbone

    @property
    def embedder(self) -> Embedder:
        return self.loaded.embedder

    @property
    def cache(self) -> PrototypeCache:
        return self.loaded.cache

    @property
    def siamese(self) -> Verifier | None:
        """The Siamese verifier; None when this backbone has no Siamese weights."""
        return self.loaded.siamese

    def _forward(self, batch: np.ndarray, wide: bool = False) -> np.ndarray:
        e = self.embedder
        return e.embed_packed(batch, wide) if e.backbone.patch_layers else e.embed(batch)

    def _forward_alone(self, batch: np.ndarray) -> np.ndarray:
        """A pass nothing else runs beside: on every inference core (FSDI_THREADS)."""
        return self._forward(batch, wide=True)

    def unpack(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The batcher's rows -> embeddings (N, D) and patch features (N, h, w, C) or None."""
        bb = self.backbone
        return unpack(rows, bb) if bb.patch_layers else (rows, None)

    def _write_results(self, items: list[PendingResults]) -> list[list[int]]:
        return write_results(ResultStore(self.sessions, self.packs,
                                         self.settings.keep_query_images,
                                         self.metrics.not_kept), items)

    def open_database(self) -> None:
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        # only a migrated database is kept: load() retries otherwise
        self._engine, self._sessions = open_migrated(self.settings.resolved_database_url)

    def load(self) -> None:
        """The slow part of start-up; runs in a thread while /healthz already answers:
        database -> admin key -> model -> support-set check -> cache -> ready. The state is
        published in one assignment, only when all of it is built."""
        try:
            if self._engine is None:
                self.open_database()
            self._bootstrap_admin()
            backbone, embedder, siamese = self._build_model()
            missing = self._missing_embeddings(backbone)
            if missing:
                # Never mix versions: classes would silently lose images.
                self.failed = f"{missing} for {backbone.version}; run `fsdi reembed`"
                log.error(self.failed)
                return
            set_search_threads(self.settings.threads)
            cache = self._build_cache(backbone)
            self.prune_query_images()
            self.prune_results()
            self._loaded = Loaded(backbone, embedder, cache, siamese)
            self.metrics.classes.set(cache.class_count())
            self.ready.set()
            log.info("ready: %s (%s), %d classes", backbone.version, embedder.runtime,
                     cache.class_count())
        except Exception as exc:
            self.failed = f"{type(exc).__name__}: see the service log"
            log.exception("start-up failed")

    def _bootstrap_admin(self) -> None:
        """With no admin anywhere, make one and print its key once."""
        if self.settings.admin_key and len(self.settings.admin_key) < 16:
            log.warning("FSDI_ADMIN_KEY is shorter than 16 characters: easy to guess")
        with self.sessions.begin() as s:
            key = bootstrap_admin(s, self.settings)
        if key:
            print(f"FSDI generated an admin key (shown once, only its hash is kept):\n"
                  f"  {key}", flush=True)

    def _build_model(self) -> tuple[Backbone, Embedder, Verifier | None]:
        """The backbone, its serving runtime, and the methods that have weights for it.
        With its ONNX export cached, the backbone is described from it and torch is never
        loaded (until a group asks for a method that adapts in torch)."""
        s = self.settings
        described = (describe_backbone(s.backbone, s.precision, s.resolved_model_cache)
                     if s.runtime == "onnxruntime" else None)
        backbone = described or create_backbone(s.backbone, s.precision)
        embedder = make_embedder(backbone, s.runtime, s.resolved_model_cache, s.stream_threads,
                                 wide_threads=s.threads)
        self.methods = usable_methods(backbone.metric_dim)
        if s.default_method not in self.methods:
            raise ValueError(f"FSDI_DEFAULT_METHOD={s.default_method!r} has no weights "
                             f"for {backbone.version}")
        siamese = (Verifier(s.serving_config(), backbone.metric_dim)
                   if "siamese" in self.methods else None)
        return backbone, embedder, siamese

    def _missing_embeddings(self, backbone: Backbone) -> str:
        """What the stored support set lacks for this backbone ("" when nothing)."""
        with self.sessions() as s:
            emb = repo.count_images_missing_version(s, backbone.version)
            # Defect images without them only leave the threshold to the good images.
            patches = (repo.count_images_missing_patches(s, backbone.patch_version,
                                                         good_only=True)
                       if backbone.patch_layers else 0)
        parts = [f"{emb} support image(s) have no embedding"] if emb else []
        if patches:
            parts.append(f"{patches} good image(s) have no patch features")
        return " and ".join(parts)

    def _build_cache(self, backbone: Backbone) -> PrototypeCache:
        """Push targets, the replica versions seen, a sweep of orphaned blobs, and every
        group's index, read in one session."""
        cfg = self.settings.serving_config()
        cache = PrototypeCache(backbone.version, cfg.layout(backbone.metric_dim, backbone.dim),
                               cfg.temperature, cfg.runtime,
                               backbone.patch_version if backbone.patch_layers else None,
                               cfg.false_alarm_rate, cfg.calibrate_scores,
                               cfg.threshold_rule, cfg.memory_patches)
        with self.sessions() as s:
            self.load_push_targets(s)
            self._seen_versions = repo.group_versions(s)  # before loading: never miss one
            self.sweep_blobs(s)
            cache.load_all(s)
        return cache

    def dependencies(self, max_age_s: float = 1.0) -> dict[str, str]:
        """Each dependency's state, "up" or why it is down, as last checked; a check older
        than `max_age_s` is redone in the background. So /readyz answers at once even
        while a dependency hangs: a load balancer's short health-check timeout must not
        take every replica out because their shared object store is slow (the store's
        state is reported, classification goes on). Only the very first check is waited
        for."""
        with self._deps_lock:
            known = dict(self._deps)
            due = (time.monotonic() - self._deps_at >= max_age_s
                   and not self._deps_checking)
            if due:
                self._deps_checking = True
        if due and known:
            threading.Thread(target=self._check_dependencies, name="fsdi-deps",
                             daemon=True).start()
        elif due:
            self._check_dependencies()
        elif not known:  # another caller is making the first check: wait for it
            with self._deps_done:
                self._deps_done.wait_for(lambda: bool(self._deps), timeout=30)
        with self._deps_lock:
            return dict(self._deps) or {"database": "unknown", "blob_store": "unknown"}

    def _check_dependencies(self) -> None:
        deps: dict[str, str] = {}
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            deps["database"] = "up"
        except Exception as exc:
            deps["database"] = f"down: {type(exc).__name__}"
        try:
            self.blobs.objects.check()
            deps["blob_store"] = "up"
        except StoreUnavailable as exc:
            deps["blob_store"] = f"down: {exc}"
        except Exception as exc:  # never leave the check marked as running
            deps["blob_store"] = f"down: {type(exc).__name__}"
        for name, state in deps.items():
            self.metrics.dependency_up.labels(name).set(1 if state == "up" else 0)
        with self._deps_lock:
            self._deps = deps
            self._deps_at = time.monotonic()
            self._deps_checking = False
        with self._deps_done:
            self._deps_done.notify_all()

    def sweep_blobs(self, s: Session) -> int:
        """Remove blobs no row refers to, older than the grace period (crash orphans).
        A store that cannot be reached is swept next time: start-up goes on."""
        try:
            removed = self.blobs.sweep(lambda ds: repo.referenced_digests(s, ds),
                                       min_age_s=self.settings.orphan_grace_s)
        except StoreUnavailable as exc:
            log.warning("orphaned blobs not swept: %s", exc)
            return 0
        if removed:
            log.warning("swept %d orphaned blob(s) left by an interrupted write", removed)
        return removed

    def prune_query_images(self) -> int:
        """Remove the query-image packs past QUERY_IMAGE_RETENTION_DAYS (0: keep all)."""
        days = self.settings.query_image_retention_days
        if days <= 0:
            return 0
        try:
            removed = self.packs.prune(days * 86_400)
        except StoreUnavailable as exc:
            log.warning("query-image retention postponed: %s", exc)
            return 0
        if removed:
            log.info("removed %d query-image pack(s) last written over %g day(s) ago",
                     removed, days)
        return removed

    def prune_idempotent(self) -> int:
        """Forget the answers kept for idempotent requests (app.services.idempotency)
        older than a day."""
        with self.sessions.begin() as s:
            return repo.prune_idempotent(s, datetime.now(UTC) - repo.IDEMPOTENCY_KEEP)

    def prune_results(self) -> int:
        """Delete the result rows past RESULT_RETENTION_DAYS (0: keep all)."""
        days = self.settings.result_retention_days
        if days <= 0:
            return 0
        cutoff = datetime.now(UTC) - timedelta(days=days)
        removed = prune_results(self.sessions, cutoff)
        if removed:
            log.info("removed %d result(s) older than %g day(s)", removed, days)
        return removed

    def load_push_targets(self, s: Session, generation: int | None = None) -> None:
        """Replace the push targets from the database. A background reader passes the
        generation it started at, so a stale read never overwrites a newer local change."""
        targets = {t.group_name: Target(t.webhook_url, t.webhook_secret, t.mqtt_topic)
                   for t in repo.push_targets(s)}
        with self._push_lock:
            if generation is not None and generation != self._push_generation:
                return
            self._push_generation += 1
            self.pusher.targets = targets

    def sync_once(self) -> list[str]:
        """Reload the groups another replica changed (their version number moved)."""
        if not self.ready.is_set() or self._loaded is None:
            return []
        generation = self._push_generation
        with self.sessions() as s:
            self.key_cache.observe(repo.keys_stamp(s))
            self.load_push_targets(s, generation)
            versions = repo.group_versions(s)
            # not a change this replica made and then read whole itself
            changed = [g for g, v in versions.items()
                       if self._seen_versions.get(g) != v and not self.cache.holds(g, v)]
            for g in changed:
                if not self.cache.refresh_group(s, g):
                    versions.pop(g)  # raced with a local change: read it again next time
        self._seen_versions = versions
        if changed:
            self.metrics.classes.set(self.cache.class_count())
        return changed

    def close(self) -> None:
        self.decode_pool.shutdown(wait=False, cancel_futures=True)
        self.packs.close()
        if self._engine is not None:
            self._engine.dispose()
