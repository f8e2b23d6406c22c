"""Request and response schemas: one family per entity, extra fields forbidden."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)

# Row ids fit a signed 32-bit column everywhere; anything larger is a 422, not a 500.
MAX_ID = 2_147_483_647
DbId = Annotated[int, Field(ge=1, le=MAX_ID)]

# The most results a classify request may ask for per image; FSDI_MAX_TOP_K (<= this) is
# the configured cap, and a request above it is refused, never silently cut.
TOP_K_LIMIT = 100


def _visible(v: str) -> str:
    """Surrounding blanks are dropped; a name of only blanks is refused."""
    v = v.strip()
    if not v:
        raise ValueError("must contain a visible character, not only whitespace")
    if not v.isprintable():
        raise ValueError("must not contain control characters (tab, newline, NUL, ...)")
    return v


Name = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_visible)]

# Group names: letters, digits and _ . : - (they appear in URLs, topics and file names).
GROUP_PATTERN = r"^[A-Za-z0-9_.:-]+$"
GroupName = Field(default="default", min_length=1, max_length=64, pattern=GROUP_PATTERN)

# Control characters have no place in a name, label, description or URL; NUL in particular
# is refused by PostgreSQL (a 500 if it got that far). Tab and newlines stay allowed in
# free text (a description), where they make sense.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _no_control(value: object, where: str) -> None:
    if isinstance(value, str) and _CONTROL.search(value):
        raise ValueError(f"{where} contains a control character")
    if isinstance(value, list):
        for v in value:
            _no_control(v, where)


class Strict(BaseModel):
    """Request bodies: unknown fields and control characters in any text are a 422."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="after")
    def _refuse_control_characters(self) -> Strict:
        for name, value in self.__dict__.items():
            _no_control(value, name)
        return self


class ClassCreate(Strict):
    name: Name
    description: str = Field(default="", max_length=2000)
    group: str = GroupName
    # "good": images of parts that pass inspection (tens of them), for the OK/NG verdict
    kind: Literal["defect", "good"] = "defect"


class ClassPublic(BaseModel):
    id: int
    name: str
    description: str
    group: str
    kind: str
    image_count: int
    created_at: datetime


class OmitUnset(BaseModel):
    """A response whose `OPTIONAL` fields are left out when None (the contract's "?")."""

    OPTIONAL: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        out: dict[str, Any] = handler(self)
        for k in self.OPTIONAL:
            if out.get(k, 0) is None:
                del out[k]
        return out


class AnomalyPublic(BaseModel):
    score: float
    # with one good image: 2.0, the largest possible score (nothing is flagged)
    threshold: float
    anomalous: bool


class ClassList(BaseModel):
    items: list[ClassPublic]


class ImagePublic(BaseModel):
    id: int
    class_id: int
    sha256: str
    original_name: str
    byte_size: int
    width: int
    height: int
    created_at: datetime


class GoodPartsReport(BaseModel):
    """The group's good-parts memory as enrolled: what its threshold rests on."""

    good_images: int
    false_alarm_rate: float
    threshold: float  # 2.0 (nothing flagged) until a second good image
    calibrated_on: int  # leave-one-out scores of good images behind the threshold
    # "false_alarm_rate": the threshold follows the rate; "balanced": too few good images
    # for the rate, so it sits midway between the good and the defect images' scores
    rule: str
    defect_examples: int  # the group's (latest, at most 64) defect images scored
    defect_examples_flagged: int  # of those, how many the threshold flags
    warning: str | None
    # The patch memory: patches searched per query patch, and how far (cosine distance)
    # a good patch may lie from its stand-in once the memory is at its cap (0: exact,
    # every patch kept; FSDI_ANOMALY_MEMORY_PATCHES).
    memory_patches: int = 0
    memory_radius: float = 0.0


class ScoresReport(BaseModel):
    """What the group's scores rest on (README, "Scores"): ProtoNet's temperature over the
    classes that name a defect (all classes in a group without good images)."""

    temperature: float
    fitted: bool  # fitted on the group's own held-out support images; else the prior's
    # centre (1-shot classes) or the fallback (one class)
    calibrated_on: int  # held-out support images behind it
    warning: str | None


class ClassReportPublic(BaseModel):
    class_id: int
    label: str
    images: int
    loo_evaluated: int
    loo_recall: float | None
    nearest_class_id: int | None
    nearest_label: str | None
    nearest_distance: float | None
    spread: float | None
    warning: str | None


class GroupReportPublic(BaseModel):
    group: str
    loo_evaluated: int
    loo_accuracy: float | None
    most_confused: dict[str, str | int] | None
    closest_pair: dict[str, str | float] | None
    classes: list[ClassReportPublic]
    warnings: list[str]
    good_parts: GoodPartsReport | None = None
    scores: ScoresReport | None = None


class EnrolResponse(BaseModel):
    images: list[ImagePublic]
    class_: ClassPublic = Field(serialization_alias="class")
    report: GroupReportPublic | None = None


ScopedGroup = Annotated[str, Field(min_length=1, max_length=64, pattern=GROUP_PATTERN)]


class KeyCreate(Strict):
    role: Literal["admin", "operator", "machine"]
    label: str = Field(default="", max_length=128)
    # The groups the key reaches; absent or null: every group.
    groups: list[ScopedGroup] | None = Field(default=None, min_length=1, max_length=1000)


class KeyPublic(BaseModel):
    id: int
    role: str
    label: str
    prefix: str
    created_at: datetime
    revoked: bool
    groups: list[str] | None = None  # None: every group


class KeyCreated(KeyPublic):
    key: str


class KeyList(BaseModel):
    items: list[KeyPublic]


class Evidence(BaseModel):
    image_id: int
    distance: float


class TopK(BaseModel):
    class_id: int
    label: str
    score: float
    distance: float
    threshold: float
    evidence: list[Evidence] | None = None


class Result(OmitUnset):
    OPTIONAL = ("anomaly", "verdict", "heatmap")

    id: int
    filename: str
    label: str | None
    class_id: int | None
    unknown: bool
    score: float
    top_k: list[TopK]
    anomaly: AnomalyPublic | None = None
    verdict: Literal["ok", "defect"] | None = None
    heatmap: str | None = None  # data:image/png;base64,... with ?heatmap=true


class ModelInfo(BaseModel):
    backbone: str
    method: str
    version: str
    runtime: str


class ClassifyResponse(BaseModel):
    results: list[Result]
    model: ModelInfo


class Me(BaseModel):
    role: str
    key_id: int | None
    groups: list[str] | None = None  # the groups the key reaches; None: every group


class GroupPublic(BaseModel):
    name: str
    class_count: int


class GroupList(BaseModel):
    items: list[GroupPublic]


class VerifyResponse(BaseModel):
    same: bool
    score: float  # the probability of "same"
    calibration: Literal["group", "global"]
    warning: str | None = None


class FeedbackCreate(Strict):
    result_id: DbId
    correct: bool
    class_id: DbId | None = None


class FeedbackPublic(BaseModel):
    id: int
    result_id: int
    correct: bool
    class_id: int | None
    created_at: datetime


class PushConfig(Strict):
    # Checked further by app.services.egress (no credentials, no internal targets).
    webhook_url: str | None = Field(default=None, max_length=2000,
                                    pattern=r"^https?://[^\s]+$")
    secret: str | None = Field(default=None, min_length=16, max_length=256)
    mqtt_topic: str | None = Field(default=None, min_length=1, max_length=256,
                                   pattern=r"^[^#+\s]+$")


class PushPublic(BaseModel):
    group: str
    webhook_url: str | None
    signed: bool
    mqtt_topic: str | None


class ConfusionCell(BaseModel):
    predicted_class_id: int | None
    predicted_label: str | None
    true_class_id: int | None
    true_label: str | None
    count: int


class FeedbackStats(BaseModel):
    group: str | None
    feedback: int
    correct: int
    wrong: int
    confusion: list[ConfusionCell]


class AuditPublic(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    detail: str


class AuditList(BaseModel):
    items: list[AuditPublic]
    offset: int
    limit: int


class ResultFeedback(BaseModel):
    correct: bool
    class_id: int | None


class HistoryItem(OmitUnset):
    """A stored classification result, as the history shows it."""

    OPTIONAL = ("verdict", "anomaly")

    id: int
    created_at: datetime
    group: str
    filename: str
    label: str | None
    class_id: int | None
    unknown: bool
    score: float
    method: str
    feedback: ResultFeedback | None = None
    verdict: Literal["ok", "defect"] | None = None
    anomaly: AnomalyPublic | None = None


class AnomalySettingsIn(Strict):
    # None: back to the service-wide FSDI_ANOMALY_FALSE_ALARM_RATE
    false_alarm_rate: float | None = Field(default=None, gt=0.0, le=0.5)
    # None: back to the service-wide FSDI_ANOMALY_THRESHOLD_RULE
    threshold_rule: Literal["auto", "false_alarm_rate"] | None = None


class GroupAnomalySettings(BaseModel):
    group: str
    false_alarm_rate: float | None  # the group's own; None: the service-wide one applies
    effective: float
    threshold_rule: str | None  # the group's own; None: the service-wide one applies
    effective_rule: str


class HistoryPage(BaseModel):
    items: list[HistoryItem]
    next_cursor: str | None
