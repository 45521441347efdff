"""Settings: defaults, then ``LOOKALIKE_*`` environment variables, then explicit overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.partition import parse_columns


class Settings(BaseSettings):
    """Every knob of Lookalike. Read with :func:`get_settings`, never at import time."""

    model_config = SettingsConfigDict(env_prefix="LOOKALIKE_", extra="ignore")

    database_url: str = Field(
        default="sqlite:///lookalike.db",
        description="SQLAlchemy URL; the default is a SQLite file in the working directory.",
    )
    weights: str = Field(
        default="auto",
        description="'imagenet', 'bundled', a path to a Keras weights file, or 'auto' "
        "(imagenet when its weights are already on disk, bundled otherwise).",
    )
    layer: str = Field(
        default="auto",
        description="Feature layer(s): 'fc2' (needs top weights) or convolutional layers such as "
        "'block4_conv3', several joined by '+'; 'auto' takes fc2 when top weights exist, else "
        "block4_conv3+block5_conv3 (the best measured on the bundled weights, QUALITY.md).",
    )
    pooling: str = Field(
        default="auto",
        description="Global pooling of each convolutional layer: avg, max, gem, rmac or crow "
        "(one for all, or one per layer joined by '+'); 'auto' takes max for block5_conv3 and "
        "gem for the other layers.",
    )
    gem_power: float = Field(default=3.0, gt=0, description="p of generalised-mean pooling.")
    feature_power: float = Field(
        default=0.5, gt=0, description="Element-wise power of each pooled vector (0.5: sqrt)."
    )
    resize: Literal["stretch", "pad"] = Field(
        default="stretch", description="Photo to square input: stretch, or pad on white."
    )
    working_scale: float = Field(
        default=0.75,
        ge=0,
        le=1,
        description="Photos larger than this share of the model input (on their long side) are "
        "first brought down to it, Lanczos-filtered: a canonical working resolution, so that "
        "a studio original and a supplier's small or recompressed copy reach the network at "
        "a similar sharpness (QUALITY.md, 'Photo sources'). 0: off. Part of the model id.",
    )
    input_size: int | None = Field(
        default=None,
        ge=32,
        description="Square model input in pixels; unset: 224 for fc layers, else 160.",
    )
    colour: Literal["auto", "rgb", "grey"] = Field(
        default="auto",
        description="Model input in colour, or grey (luma in all three channels); 'auto' takes "
        "grey for the bundled weights' convolutional layers (better at finding the same kind "
        "of product, worse at the same colour: QUALITY.md) and rgb otherwise.",
    )
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        default="auto",
        description="Arithmetic of the model: bfloat16 is several times faster on CPUs with "
        "AMX/AVX-512 BF16, at a small cost in agreement (see BENCHMARKS.md), and no faster "
        "elsewhere; 'auto' takes bfloat16 where the CPU has it, float32 otherwise. Set it "
        "explicitly when workers run on different CPUs: it is part of the model id.",
    )
    pca_dims: int = Field(
        default=64,
        ge=0,
        description="PCA-whitening dimensions learned from the catalogue's own vectors (0: off). "
        "Fitted once, stored with the index; refitted by `lookalike index --refit` and when "
        "adds have grown the catalogue (refit_growth).",
    )
    pca_whiten: float = Field(
        default=0.75,
        ge=0,
        description="Whitening strength: components divided by variance^(w/2); 1 is full "
        "whitening, 0 none.",
    )
    refit_growth: float = Field(
        default=1.5,
        ge=0,
        description="When adds have grown the catalogue to this many times the vectors its "
        "projection was fitted on, the add that got there queues an index job of the stored "
        "catalogue that fits the projection again and rebuilds every list in the new space "
        "(adds stay exact in between; QUALITY.md, 'Photo sources'). 0: never, only "
        "`lookalike index --refit`.",
    )
    pca_power: float = Field(
        default=1.0, gt=0, description="Signed power applied after whitening (0.5: square root)."
    )
    source_dims: int = Field(
        default=32,
        ge=0,
        description="Directions removed from every vector before the PCA: those in which a "
        "photo's vector moves when it comes smaller or more compressed, learned from a sample of "
        "the catalogue's own photos when the projection is fitted, so that photo sources do not "
        "decide the neighbours (0: off). Part of the projection's tag.",
    )
    partition: str = Field(
        default="",
        description="Metadata columns, comma-separated (for example 'gender'), that lookalikes "
        "are grouped by: a product's ten lookalikes then come only from products with the same "
        "values of every one. Empty: the whole catalogue. Part of the space lists are built "
        "in: after a change, `lookalike index --stored` (or the next add or delete) rebuilds them.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Logs as text lines, or one JSON object per line (time, level, logger, "
        "message, job_id, request_id) for a log pipeline.",
    )
    batch_size: int = Field(
        default=16,
        ge=1,
        description="Images per model call (a GPU worker takes a larger one of its own, "
        "for example 128).",
    )
    device: Literal["auto", "cpu", "gpu"] = Field(
        default="auto",
        description="Where the model runs: 'auto' takes the GPUs TensorFlow sees (with "
        "lookalike[gpu] installed), 'gpu' warns and falls back to the CPU without one. Not "
        "part of the model id: set the precision explicitly where GPU and CPU workers mix.",
    )
    decode_workers: int = Field(default=2, ge=1, description="Threads that decode images.")
    neighbours: int = Field(default=10, ge=1, description="k: neighbours kept per product.")
    block_size: int = Field(default=2048, ge=16, description="Queries per neighbour-search block.")
    max_image_pixels: int = Field(
        default=50_000_000, ge=1, description="Larger images are refused (decompression bombs)."
    )
    max_image_bytes: int = Field(default=20 * 1024 * 1024, ge=1, description="Largest image file.")
    chunk_size: int = Field(default=256, ge=1, description="Images per indexing chunk (task).")
    build_block_rows: int = Field(
        default=16384,
        ge=256,
        description="Rows per block (task) of the full neighbour build; blocks run on any "
        "worker, in parallel, the last ones smaller so that the workers finish together.",
    )
    neighbour_search: Literal["auto", "exact", "approximate"] = Field(
        default="auto",
        description="How a full neighbour build searches: exact (every pair), approximate "
        "(faiss IVF, its probe calibrated to approximate_recall on a sample), or auto: exact "
        "below approximate_from products, approximate from there. Adds and deletes are exact "
        "in every mode.",
    )
    approximate_from: int = Field(
        default=500_000,
        ge=1,
        description="Products from which an 'auto' build is approximate: an exact build of "
        "1,000,000 took 14-19 minutes through two worker processes on two cores with "
        "AVX-512, 25.5 on two without (BENCHMARKS.md: about 1.06x faiss's flat search on "
        "each); 500,000 is about a quarter, well inside the 20-minute budget on any machine "
        "measured.",
    )
    approximate_recall: float = Field(
        default=0.98,
        gt=0,
        le=1,
        description="Recall@k an approximate build aims at, measured on a sample of rows.",
    )
    broker_url: str | None = Field(
        default=None,
        description="Celery broker. Unset: the CLI runs jobs in-process, and the web app and "
        "workers use redis://127.0.0.1:6379/0.",
    )
    queue: str = Field(default="lookalike", description="Celery queue name.")
    embed_queue: str = Field(
        default="",
        description="A queue of its own for index jobs' embedding chunks, which GPU workers "
        "(`lookalike worker --embed-only`) take while CPU workers take the rest; every other "
        "worker takes it too, so it drains without them. Empty: one queue for everything.",
    )
    task_time_limit: int = Field(default=1800, ge=10, description="Hard limit of one task, s.")
    visibility_timeout: int = Field(
        default=60,
        ge=1,
        description="Seconds after a worker's last sign of life before Redis hands its "
        "unacknowledged tasks to another worker (live workers renew their tasks' leases every "
        "quarter of it, so tasks may run longer).",
    )
    worker_start_timeout: float = Field(
        default=120,
        gt=0,
        description="Seconds a new worker process may take to start (it loads the model) "
        "before Celery gives up on it and kills it.",
    )
    media_dir: Path = Field(default=Path("media"), description="Where uploaded photos are kept.")
    api_token: str | None = Field(default=None, description="Bearer token for write endpoints.")
    max_request_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1, description="Largest request body (413 beyond)."
    )
    read_cache_entries: int = Field(
        default=10_000,
        ge=0,
        description="Lookalike responses each web process keeps in memory (about 3 kB each); "
        "0 turns the cache off.",
    )
    read_cache_seconds: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="Longest a kept response outlives the write that changed it, in seconds.",
    )

    @field_validator("refit_growth")
    @classmethod
    def _growth(cls, value: float) -> float:
        if 0 < value <= 1:
            raise ValueError(
                "a growth must be more than 1 (half as large again: 1.5), or 0 for never"
            )
        return value

    @field_validator("partition")
    @classmethod
    def _partition_names(cls, value: str) -> str:
        return ",".join(parse_columns(value))

    @property
    def partition_columns(self) -> tuple[str, ...]:
        return parse_columns(self.partition)


def get_settings(**overrides: Any) -> Settings:
    """Build settings now: defaults, then the environment, then ``overrides``."""
    return Settings(**overrides)
