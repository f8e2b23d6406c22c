"""SQLAlchemy 2.0 tables. Embeddings are little-endian float32 bytes, never pickles."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend. SQLite keeps no time zone: times are
    written there as UTC wall time and read back with the UTC zone put back. PostgreSQL
    keeps `timestamptz` as it always did. A naive time is refused, never guessed."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("a naive datetime has no time zone; use an aware one (UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect
                             ) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


class DefectClass(Base):
    __tablename__ = "classes"
    # AUTOINCREMENT: SQLite never hands a deleted class's id to another class.
    __table_args__ = (UniqueConstraint("group_name", "name", name="uq_class_group_name"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    group_name: Mapped[str] = mapped_column(String(64), index=True)
    description: Mapped[str] = mapped_column(Text, default="")
    # "defect", or "good": images of parts that pass inspection (the good-parts memory)
    kind: Mapped[str] = mapped_column(String(8), default="defect", server_default="defect")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    images: Mapped[list[SupportImage]] = relationship(
        back_populates="defect_class", cascade="all, delete-orphan", passive_deletes=True
    )


class SupportImage(Base):
    __tablename__ = "support_images"
    __table_args__ = (UniqueConstraint("class_id", "sha256", name="uq_image_class_sha"),
                      {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    class_id: Mapped[int] = mapped_column(
        ForeignKey("classes.id", ondelete="CASCADE"), index=True
    )
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    original_name: Mapped[str] = mapped_column(String(255))
    byte_size: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    defect_class: Mapped[DefectClass] = relationship(back_populates="images")
    embeddings: Mapped[list[Embedding]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True
    )
    patches: Mapped[list[PatchFeatures]] = relationship(
        back_populates="image", cascade="all, delete-orphan", passive_deletes=True
    )


class Embedding(Base):
    """One embedding of one support image under one backbone version."""

    __tablename__ = "embeddings"
    __table_args__ = (
        UniqueConstraint("image_id", "model_version", name="uq_embedding_image_version"),
        Index("ix_embeddings_version", "model_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(
        ForeignKey("support_images.id", ondelete="CASCADE"), index=True
    )
    backbone: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(128))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    image: Mapped[SupportImage] = relationship(back_populates="embeddings")


class PatchFeatures(Base):
    """An image's patch features (models.patchcore) under one patch version:
    (h, w, C) little-endian float16 unit vectors."""

    __tablename__ = "patch_features"
    __table_args__ = (
        UniqueConstraint("image_id", "model_version", name="uq_patches_image_version"),
        Index("ix_patch_features_version", "model_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    image_id: Mapped[int] = mapped_column(
        ForeignKey("support_images.id", ondelete="CASCADE"), index=True
    )
    model_version: Mapped[str] = mapped_column(String(200))
    grid_h: Mapped[int] = mapped_column(Integer)
    grid_w: Mapped[int] = mapped_column(Integer)
    channels: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    image: Mapped[SupportImage] = relationship(back_populates="patches")


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    role: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # The groups the key reaches, as a JSON list; NULL: every group.
    groups: Mapped[str | None] = mapped_column(Text, nullable=True)


# Ids of the tables that grow with traffic: 64-bit on PostgreSQL (2^31 results is eight
# months at 100 img/s); SQLite's INTEGER PRIMARY KEY is 64-bit already and must stay
# the rowid.
BigId = BigInteger().with_variant(Integer, "sqlite")


class ClassificationResult(Base):
    """One classified image; its id is what operators give feedback on."""

    __tablename__ = "classification_results"
    # History pages are newest first (by id) within a group, filtered: each filter has an
    # index that reaches its first page, or its absence, without scanning the group.
    __table_args__ = (
        Index("ix_results_group_id", "group_name", "id"),
        Index("ix_results_group_verdict_id", "group_name", "verdict", "id"),
        Index("ix_results_group_unknown_id", "group_name", "unknown", "id"),
        Index("ix_results_group_label_id", "group_name", "label", "id"),
        # Only judged results (operators judge few): small, and reached by each verdict.
        Index("ix_results_group_feedback_id", "group_name", "feedback_correct", "id",
              postgresql_where=text("feedback_correct IS NOT NULL"),
              sqlite_where=text("feedback_correct IS NOT NULL")),
        Index("ix_results_feedback_id", "feedback_correct", "id",
              postgresql_where=text("feedback_correct IS NOT NULL"),
              sqlite_where=text("feedback_correct IS NOT NULL")),
        # Time windows: a day's rows of a group are read from here (index-only) rather
        # than by walking the group's newer ids down to them.
        Index("ix_results_group_time", "group_name", "created_at", "id"),
        Index("ix_results_time", "created_at", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    group_name: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    # Where the kept image lies in the query-image packs (storage/packs.py); None when
    # it was not kept, or was kept as a blob before packs existed.
    image_ref: Mapped[str | None] = mapped_column(String(96), nullable=True)
    class_id: Mapped[int | None] = mapped_column(
        ForeignKey("classes.id", ondelete="SET NULL", name="fk_results_class"),
        nullable=True, index=True)
    label: Mapped[str | None] = mapped_column(String(128), nullable=True)
    unknown: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[float] = mapped_column(Float)
    method: Mapped[str] = mapped_column(String(32))
    model_version: Mapped[str] = mapped_column(String(128))
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # In groups with good images: the part's OK/NG answer and its anomaly score.
    verdict: Mapped[str | None] = mapped_column(String(8), nullable=True)
    anomaly_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    anomaly_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The latest feedback's verdict (NULL: none yet), kept by a trigger on feedback
    # (migration 0011) so that the history's feedback filter is an index like the others.
    # The feedback rows stay the record; this is their index.
    feedback_correct: Mapped[bool | None] = mapped_column(Boolean, nullable=True)


class Feedback(Base):
    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    result_id: Mapped[int] = mapped_column(
        BigId, ForeignKey("classification_results.id", ondelete="CASCADE"), index=True
    )
    correct: Mapped[bool] = mapped_column(Boolean)
    class_id: Mapped[int | None] = mapped_column(
        ForeignKey("classes.id", ondelete="SET NULL", name="fk_feedback_class"),
        nullable=True, index=True)
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class GroupVersion(Base):
    """Bumped in the same transaction as every change to a group's support set; other
    replicas poll it and reload the groups whose number moved."""

    __tablename__ = "group_versions"

    group_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class GroupSetting(Base):
    """A group's own settings; a missing row or NULL means the service-wide setting."""

    __tablename__ = "group_settings"

    group_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    false_alarm_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    # "auto" | "false_alarm_rate" (models.inference.THRESHOLD_RULES)
    threshold_rule: Mapped[str | None] = mapped_column(String(32), nullable=True)


class PushTarget(Base):
    """Where a group's classification results are pushed (webhook and/or MQTT topic)."""

    __tablename__ = "push_targets"

    group_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    webhook_url: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    webhook_secret: Mapped[str | None] = mapped_column(String(256), nullable=True)
    mqtt_topic: Mapped[str | None] = mapped_column(String(256), nullable=True)


class AuditEvent(Base):
    """Append-only log: who did what, when."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str] = mapped_column(Text, default="")


class IdempotentRequest(Base):
    """A /classify request sent with an `Idempotency-Key`: claimed before it runs, its
    answer kept once it has, so that a client that retries (after a timeout, a restart)
    gets the first answer back instead of a second classification. Kept a day."""

    __tablename__ = "idempotent_requests"
    __table_args__ = (UniqueConstraint("key_scope", "idem_key", name="uq_idempotent_key"),
                      Index("ix_idempotent_created", "created_at"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # The API key's id (0: the bootstrap admin key): one client's keys never meet another's.
    key_scope: Mapped[int] = mapped_column(Integer)
    idem_key: Mapped[str] = mapped_column(String(128))
    # sha256 of what was asked (group, options, every file's name and bytes)
    request_hash: Mapped[str] = mapped_column(String(64))
    response: Mapped[str | None] = mapped_column(Text, nullable=True)  # None: running
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
