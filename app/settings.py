"""Every limit and knob of the service, from the environment (prefix FSDI_)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from PIL import Image
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.calibration import CalibrationConfig
from models.inference import ServingConfig
from models.methods.protonet import DEFAULT_TEMPERATURE
from models.patchcore.memory import MEMORY_PATCHES


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FSDI_", extra="ignore")

    data_dir: Path = Path("./data")
    database_url: str | None = None
    # The bootstrap admin key. There is no default secret: unset, `fsdi serve` generates
    # one on first start. A short key works (operators script with what they have) but is
    # warned about at start-up.
    admin_key: str | None = Field(default=None, max_length=512)

    model_cache_dir: Path | None = None  # exported ONNX files; default data_dir/onnx
    backbone: str = "fsdi_lite0_meta"
    runtime: str = "onnxruntime"
    # "int8": static INT8 quantisation of the served network (ONNX Runtime only). Whether
    # it is faster depends on the CPU's int8 kernels (bench/README.md); accuracy in
    # models/MODEL_CARD.md. Changing it changes the model version (run `fsdi reembed`).
    precision: Literal["fp32", "int8"] = "fp32"
    threads: int = Field(default=2, ge=1, le=64)
    default_method: str = "protonet"
    # What the default method (ProtoNet) ranks classes by, for a backbone with two parts:
    # "appearance", the frozen ImageNet global pool (chosen on real images: the
    # meta-trained head loses to it there, models/MODEL_CARD.md), or "metric", the head.
    rank_by: Literal["appearance", "metric"] = "appearance"
    # ProtoNet's score is softmax(-d^2 / T). "group": each group fits its own T on its
    # support set, left out one image at a time, so a score is an honest probability
    # (README, "Scores"); `temperature` is then only the fallback for groups that cannot
    # (one class, or 1-shot classes only). "fixed": T = `temperature` everywhere.
    score_calibration: Literal["group", "fixed"] = "group"
    temperature: float = Field(default=DEFAULT_TEMPERATURE, gt=0)

    # Unknown rejection (see README, "Calibration"). The calib_* numbers apply to the
    # appearance embedding (ImageNet global pool); calib_metric_* to a meta-trained
    # metric part, which is more spread out and judged more leniently.
    calib_metric_margin: float = 1.5
    calib_metric_k_std: float = 3.0
    calib_metric_floor: float = 0.4
    calib_metric_ceiling: float = 1.3
    calib_metric_fallback: float = 1.3
    calib_margin: float = 1.5
    calib_k_std: float = 3.0
    calib_floor: float = 0.25
    calib_ceiling: float = 0.95
    calib_fallback: float = 1.0
    # Good parts (README, "Good parts and the verdict"): the share of good parts the
    # anomaly threshold may flag, calibrated on each group's good images; a group can
    # override it (PUT /api/v1/groups/{group}/anomaly).
    anomaly_false_alarm_rate: float = Field(default=0.02, gt=0.0, le=0.5)
    # "auto": while a group's good images are too few to tell that rate apart, its
    # threshold sits midway between its good and defect images' scores (where it has
    # defect images); "false_alarm_rate": always from the good images alone.
    anomaly_threshold_rule: Literal["auto", "false_alarm_rate"] = "auto"
    # The good-parts patch memory holds at most this many patches (0: every patch): past
    # it a group's cost per image stops growing with its good images (README, "Good
    # parts"; default chosen in bench/README.md).
    anomaly_memory_patches: int = Field(default=MEMORY_PATCHES, ge=0)

    # Limits: checked before work, every one a 4xx.
    max_request_bytes: int = 64 * 1024 * 1024
    max_file_bytes: int = 16 * 1024 * 1024
    max_files_per_request: int = 64
    # At most Pillow's own limit (Image.MAX_IMAGE_PIXELS, ~89 M), past which Pillow warns
    # or refuses whatever this says: our header check always decides first.
    max_image_pixels: int = Field(default=40_000_000, ge=1, le=Image.MAX_IMAGE_PIXELS)
    max_top_k: int = Field(default=20, ge=1, le=100)  # app.schemas.TOP_K_LIMIT
    page_size: int = 100
    # Decoded pixels cost memory at 8-bit RGB: a file whose decoded size (width × height ×
    # bytes per pixel of its mode, 16-bit counted twice) exceeds this is refused from its
    # header, before any decoding.
    max_decoded_bytes: int = Field(default=160 * 1024 * 1024, ge=1024)

    # Connections (app.server): checked per connection before any request is routed.
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)  # 431 and close past it
    header_timeout_s: float = Field(default=10.0, gt=0)  # headers complete within this
    body_idle_timeout_s: float = Field(default=15.0, gt=0)  # no body byte this long: close
    body_timeout_s: float = Field(default=300.0, gt=0)  # a whole body within this
    max_connections: int = Field(default=4096, ge=16)  # also capped by the open-file limit
    max_in_flight: int = Field(default=256, ge=1)  # requests at once; past it 503

    # Where image bytes live (README, "Many hosts"): unset, under data_dir on this host;
    # s3://BUCKET/PREFIX, an S3-compatible object store that replicas on other hosts share
    # (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, never from here).
    blob_url: str | None = None
    s3_endpoint_url: str | None = None  # a non-AWS S3 server, e.g. http://127.0.0.1:8333

    # Keep classified images (appended to pack files under data_dir/query-images, not
    # fsynced) so an operator's correction can be promoted into the support set in one
    # call. Best effort: when the disk refuses, classification goes on without keeping.
    keep_query_images: bool = True
    # Packs last written longer ago than this are removed, at start-up and hourly (0:
    # never); a result whose image is gone can no longer be promoted (409).
    query_image_retention_days: float = Field(default=30, ge=0)
    # Result rows (and their feedback) older than this are deleted, at start-up and hourly,
    # a few thousand per transaction (0: kept for ever). `fsdi results archive` keeps them
    # as Parquet first.
    result_retention_days: float = Field(default=0, ge=0)

    # Result push: the MQTT broker (mqtt://host:port) for groups with an mqtt_topic, and
    # the webhook delivery policy.
    mqtt_url: str | None = None
    push_queue_max: int = Field(default=1000, ge=1)
    push_max_attempts: int = Field(default=5, ge=1, le=20)
    push_backoff_s: float = Field(default=0.5, gt=0)
    # Webhooks never go to loopback, private, link-local (cloud metadata), multicast or
    # other non-global addresses, except to the hosts listed here (comma-separated exact
    # names, addresses or CIDR networks, e.g. "mes.plant.local,10.20.0.0/16").
    push_allow_hosts: str = ""

    # The OPC UA server for PLCs (README, "Connect the line"): off unless a URL is given,
    # e.g. opc.tcp://0.0.0.0:4840/fsdi. Sessions need a live key as the password unless
    # anonymous ones are allowed; encrypted_only drops the None endpoint (the password is
    # encrypted on it too, the values are not).
    opcua_url: str | None = None
    opcua_allow_anonymous: bool = False
    opcua_encrypted_only: bool = False

    # Replicas sharing one database poll for each other's changes this often (0: off).
    sync_interval_ms: int = Field(default=500, ge=0)
    # On PostgreSQL, also hear each change at once (LISTEN/NOTIFY). Off: the poll alone,
    # e.g. behind a pooler in transaction mode (PgBouncer), where LISTEN does not work.
    sync_notify: bool = True
    # A stored key, once verified, is trusted from memory for at most this long (0: every
    # request asks the database). A revocation on this replica ends it at once; one made
    # elsewhere (another replica, a direct database change) within sync_interval_ms (within
    # key_cache_s when the sync is off).
    key_cache_s: float = Field(default=5.0, ge=0)
    # Orphaned blobs are swept at start-up only once this old: another replica sharing
    # the image volume may be between writing a blob and committing its row.
    orphan_grace_s: float = Field(default=600, ge=0)

    # Micro-batching and overload.
    # Forward passes that run at once, each on threads // streams cores; default: one
    # single-threaded stream per core, two images per forward pass (why: bench/README.md;
    # bench/classify.py sweeps them); raise batch_max_size where bigger batches pay.
    infer_streams: int | None = Field(default=None, ge=1, le=64)
    batch_max_size: int = Field(default=2, ge=1)
    batch_max_wait_ms: float = Field(default=2.0, ge=0)
    queue_max_images: int = Field(default=512, ge=1)
    decode_workers: int = Field(default=2, ge=1)

    def serving_config(self) -> ServingConfig:
        """Every choice the service makes when it builds a group (models.inference)."""
        metric, appearance = self.calibration()
        return ServingConfig(metric, appearance, self.rank_by, self.temperature,
                             self.score_calibration == "group", self.runtime,
                             self.anomaly_false_alarm_rate, self.anomaly_threshold_rule,
                             self.anomaly_memory_patches or None)

    def calibration(self) -> tuple[CalibrationConfig, CalibrationConfig]:
        """(metric part, appearance part) rejection calibration."""
        metric = CalibrationConfig(
            margin=self.calib_metric_margin, k_std=self.calib_metric_k_std,
            floor=self.calib_metric_floor, ceiling=self.calib_metric_ceiling,
            fallback=self.calib_metric_fallback)
        appearance = CalibrationConfig(
            margin=self.calib_margin, k_std=self.calib_k_std, floor=self.calib_floor,
            ceiling=self.calib_ceiling, fallback=self.calib_fallback)
        return metric, appearance

    @field_validator("admin_key")
    @classmethod
    def _blank_is_unset(cls, v: str | None) -> str | None:
        v = v.strip() if v else v
        return v or None

    @model_validator(mode="after")
    def _int8_needs_onnxruntime(self) -> Settings:
        if self.precision != "fp32" and self.runtime != "onnxruntime":
            raise ValueError(f"FSDI_PRECISION={self.precision} needs "
                             f"FSDI_RUNTIME=onnxruntime (torch serves fp32 only)")
        return self

    @model_validator(mode="after")
    def _streams_fit_threads(self) -> Settings:
        if self.infer_streams is not None and self.infer_streams > self.threads:
            raise ValueError(f"FSDI_INFER_STREAMS={self.infer_streams} is more than "
                             f"FSDI_THREADS={self.threads}: the streams would oversubscribe "
                             f"the cores")
        return self

    @property
    def streams(self) -> int:
        return self.infer_streams or self.threads

    @property
    def stream_threads(self) -> int:
        """ORT intra-op (or torch) threads per inference stream."""
        return max(1, self.threads // self.streams)

    @property
    def resolved_model_cache(self) -> Path:
        return self.model_cache_dir or self.data_dir / "onnx"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'fsdi.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
