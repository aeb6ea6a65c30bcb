"""The YAML job config as pydantic models. Unknown keys are errors that name the key."""
from __future__ import annotations

import os
from functools import cached_property
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from queue_store.location import Location, ObjectStore
from queue_store.names import check_name


class ConfigError(ValueError):
    """A config or argument problem; the message is one line saying what to fix."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PostsConfig(Strict):
    path: str = "demo_data/posts"
    start_date: date | None = None
    end_date: date | None = None
    read_batch_rows: int = Field(10_000, ge=1)


class FeedsConfig(Strict):
    """For ``-r posts_used_in_feeds``: the uris served in study users' feeds, per day."""

    path: str | None = None      # <path>/partition_date=YYYY-MM-DD/*.parquet with a uri column
    lookback_days: int = Field(5, ge=0)  # a feed day D shows posts of days D-lookback .. D
    earliest_date: date | None = None    # no post before this day


class QueueConfig(Strict):
    batch_size: int = Field(1000, ge=1)
    lease_seconds: float = Field(60, gt=0)
    max_attempts: int = Field(3, ge=1)
    # Posts per enqueue transaction: an inference run in the same command claims each chunk
    # once it is committed (smaller: claims start sooner; larger: a little less per post).
    enqueue_chunk_posts: int = Field(50_000, ge=1)


class PipelineConfig(Strict):
    read_tasks: int = Field(2, ge=1)
    read_task_num_cpus: float = Field(0.25, ge=0)
    # At most this many queue batches per claim; None: as many as fill one read block, in one
    # QueueActor call and transaction (measured at 1M posts: the QueueActor's CPU per post
    # 13.9 -> 9.8 us against one batch per claim, the blocks unchanged).
    batches_per_claim: int | None = Field(None, ge=1)
    # Ray Data's block size: smaller blocks hand claims on (and bring results back) sooner,
    # so progress moves and leases are held shortly; larger ones cost less per post.
    # Measured (constant classifier, 50k posts): 64 KiB 2.0k, 256 KiB 5.3k, 512 KiB 8.4k,
    # 1 MiB 7.9k posts/s. A model-bound run can take smaller blocks at no cost.
    read_block_bytes: int = Field(512 << 10, ge=1024)
    # A claim's batches complete together, as one labelled file, once all have results; a
    # batch whose results are all in waits at most this long for the others (a slow model,
    # a block split over actors), then completes with those done so far.
    complete_within_s: float = Field(2.0, gt=0)
    # Whole claims complete together, up to about this many posts: one labelled file per
    # post day and one fenced transaction for all of them (while results keep arriving).
    # Measured at 1M posts against a claim each: QueueActor 5.3-5.4 -> 4.4-4.7 and writer
    # 8.5-8.8 -> 7.4-7.9 CPU us/post; 20,000 cost the same (writer peak 145 vs 144 MB).
    complete_posts: int = Field(10_000, ge=1)
    export_rows: int = Field(50_000, ge=1)
    compact_rows: int = Field(1_000_000, ge=1)  # rows per file --compact-output writes
    export_every_seconds: float = Field(60, gt=0)
    no_progress_timeout_s: float = Field(600, gt=0)
    # A run whose actors stop answering this long (the Ray cluster went away) stops with
    # one line and its summary; Ray's own limit (then a bare exit) is set above it.
    cluster_lost_after_s: float = Field(30, gt=0, le=100)


class ClassifierConfig(Strict):
    type: str
    params: dict[str, Any] = Field(default_factory=dict)  # as written, paths resolved

    @cached_property
    def typed(self) -> Any:
        """The params as the classifier declares them (validated at load)."""
        from classifiers.registry import typed_params

        return typed_params(self.type, self.params)

    @cached_property
    def config_hash(self) -> str:
        """Names everything that changes this classifier's labels (classifiers/config_hash);
        computed once, so every stage of a command labels under the same hash."""
        from classifiers.config_hash import config_hash

        return config_hash(self.type, self.params)

    def problems(self, where: str) -> list[str]:
        """What is wrong with the type or the params, each naming its place in the config."""
        from classifiers.registry import (ClassifierConfigError, param_problems, params_model,
                                          resolve_class)

        try:
            model = params_model(resolve_class(self.type))
        except ClassifierConfigError as exc:
            return [f"{where}.type: {exc}"]
        return [f"{where}.{p}" for p in param_problems(model, self.params)] if model else []


class RayConfig(Strict):
    """``ray.init()`` arguments. ``address`` (or ``--address``, or ``RAY_ADDRESS``) joins a
    running cluster; without one the job starts its own local Ray, configured by the other
    keys (which a joined cluster ignores, with one info line)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)
    # Ray refuses an object store under 75 MiB; a tiny one only fails later, obscurely.
    object_store_memory: int | None = Field(None, ge=75 * 1024 * 1024)
    resources: dict[str, float] | None = None
    labels: dict[str, str] | None = None
    include_dashboard: bool | None = None
    dashboard_host: str | None = None
    dashboard_port: int | None = Field(None, ge=1, le=65535)
    namespace: str | None = None
    runtime_env: dict[str, Any] | None = None
    log_to_driver: bool | None = None
    logging_level: int | str | None = None
    temp_dir: str | None = Field(None, alias="_temp_dir")
    system_config: dict[str, Any] | None = Field(None, alias="_system_config")
    # Not for ray.init: a local Ray whose raylet does not register within Ray's 30 s (a
    # loaded machine; RAY_raylet_start_wait_time_s gives each start more) is stopped and
    # started again, this many starts in all.
    start_attempts: int = Field(3, ge=1)

    def init_kwargs(self) -> dict[str, Any]:
        """The keys that were set, as ``ray.init`` names them."""
        return self.model_dump(exclude_none=True, by_alias=True, exclude={"start_attempts"})


class ActorPoolConfig(Strict):
    min: int = Field(1, ge=1)
    max: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "ActorPoolConfig":
        if self.max < self.min:
            raise ValueError(f"actors.max ({self.max}) is below actors.min ({self.min})")
        return self


class IntegrationConfig(Strict):
    code: str
    classifier: ClassifierConfig
    batch_size: int = Field(256, ge=1)
    actors: ActorPoolConfig = Field(default_factory=ActorPoolConfig)
    num_gpus: float = Field(0, ge=0)
    num_cpus: float = Field(1, ge=0)


class BackfillConfig(Strict):
    data_dir: str = "data"
    output_dir: str | None = None
    posts: PostsConfig = Field(default_factory=PostsConfig)
    feeds: FeedsConfig = Field(default_factory=FeedsConfig)
    queue: QueueConfig = Field(default_factory=QueueConfig)
    pipeline: PipelineConfig = Field(default_factory=PipelineConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    # Where an S3-compatible store answers (posts, output, gold files as s3:// URIs);
    # credentials come from the environment / the AWS chain, never from this file.
    object_store: ObjectStore = Field(default_factory=ObjectStore)
    integrations: dict[str, IntegrationConfig]

    @field_validator("integrations")
    @classmethod
    def _names_and_codes(cls, value: dict[str, IntegrationConfig]) -> dict[str, IntegrationConfig]:
        if not value:
            raise ValueError("at least one integration is needed")
        for name in value:
            check_name(name)
        codes = [i.code for i in value.values()]
        dupes = sorted({c for c in codes if codes.count(c) > 1})
        if dupes:
            raise ValueError(f"integration codes must be unique, repeated: {dupes}")
        return value

    @property
    def output_base(self) -> str:
        """Where labels go: ``output_dir`` (a folder or a URI), else ``data_dir``."""
        return self.output_dir or self.data_dir

    def output_location(self, integration: str) -> Location:
        """One integration's parquet output (a local folder or an object store)."""
        return Location.of(self.output_base, self.object_store).child(integration)

    def location(self, where: str) -> Location:
        """A posts folder or gold file, local or in an object store."""
        return Location.of(where, self.object_store)

    def for_a_new_command(self) -> "BackfillConfig":
        """A copy whose classifiers compute their config_hash anew: one command's stages share
        one hash, but a model or file may have arrived since an earlier command (a notebook
        keeps one config object for many) computed it."""
        fresh = self.model_copy(deep=True)
        for integ in fresh.integrations.values():
            integ.classifier.__dict__.pop("config_hash", None)
        return fresh

    def resolve_integration(self, name_or_code: str) -> tuple[str, IntegrationConfig]:
        """Accept a full name or a short code (``-i g``)."""
        if name_or_code in self.integrations:
            return name_or_code, self.integrations[name_or_code]
        for name, integ in self.integrations.items():
            if integ.code == name_or_code:
                return name, integ
        known = ", ".join(f"{i.code} ({n})" for n, i in self.integrations.items())
        raise ConfigError(f"unknown integration {name_or_code!r}; this config defines: {known}")


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)


def parse_config(raw: dict[str, Any], source: str = "config") -> BackfillConfig:
    """The config as models; every classifier's params checked against what its class
    declares, before anything runs."""
    try:
        config = BackfillConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_one_line(exc)}") from None
    problems = [p for name, integ in config.integrations.items()
                for p in integ.classifier.problems(f"integrations.{name}.classifier")]
    if problems:
        raise ConfigError(f"{source}: {'; '.join(problems)}")
    return config


def _is_uri(value: str) -> bool:
    return "://" in value


def _resolve(base: Path, value: str | None) -> str | None:
    if value is None or _is_uri(value):
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base / path).resolve())


def _resolve_model(base: Path, model: Any) -> Any:
    """A model that is a folder next to the config, or is written as a path, becomes an
    absolute path; anything else stays a hub id (``org/name``)."""
    from classifiers.hf.weights import written_as_path

    if not isinstance(model, str) or not model or model.startswith("packaged:"):
        return model
    if written_as_path(model) or (base / Path(model).expanduser()).is_dir():
        return _resolve(base, model)
    return model


def resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """Every path in the config relative to ``base`` (the config file's folder), so a job
    reads and writes the same places from any working directory (``ray job submit`` runs
    it inside an uploaded copy of the project)."""
    raw = dict(raw)
    for key in ("data_dir", "output_dir"):
        if isinstance(raw.get(key), str):
            raw[key] = _resolve(base, raw[key])
    raw.setdefault("data_dir", _resolve(base, "data"))
    posts = dict(raw.get("posts") or {})
    posts["path"] = _resolve(base, posts.get("path", PostsConfig().path))
    raw["posts"] = posts
    if isinstance(raw.get("feeds"), dict) and isinstance(raw["feeds"].get("path"), str):
        raw["feeds"] = dict(raw["feeds"], path=_resolve(base, raw["feeds"]["path"]))
    integrations = raw.get("integrations")
    if isinstance(integrations, dict):
        raw["integrations"] = {name: _resolve_integration(base, block)
                               for name, block in integrations.items()}
    return raw


def _resolve_integration(base: Path, block: Any) -> Any:
    """The classifier's file and model params (as its class declares them) resolved."""
    from classifiers.params import FILE, MODEL
    from classifiers.registry import ClassifierConfigError, params_model, resolve_class

    if not isinstance(block, dict) or not isinstance(block.get("classifier"), dict):
        return block
    clf = dict(block["classifier"])
    try:
        model = params_model(resolve_class(str(clf.get("type"))))
    except ClassifierConfigError:
        return block  # reported by validation, with the config's path
    params = dict(clf.get("params") or {})
    for key in model.fields_of_kind(FILE) if model else ():
        if isinstance(params.get(key), str):
            params[key] = _resolve(base, params[key])
    for key in model.fields_of_kind(MODEL) if model else ():
        if key in params:
            params[key] = _resolve_model(base, params[key])
    clf["params"] = params
    return dict(block, classifier=clf)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``KEY.PATH=VALUE`` settings (``--set``) on top of the file's: the value is read as YAML
    (``8`` is a number, ``[a, b]`` a list), a dotted key walks into mappings, creating them."""
    for item in overrides:
        key, sep, value = item.partition("=")
        parts = [p for p in key.strip().split(".") if p]
        if not sep or not parts:
            raise ConfigError(f"--set {item!r}: write KEY.PATH=VALUE, e.g. "
                              "integrations.NAME.classifier.params.base_url=http://host:8000/v1")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        node = raw
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a mapping in the config")
            node = child
        node[parts[-1]] = parsed
    return raw


def load_config(path: str | Path, data_dir: str | None = None,
                overrides: list[str] | None = None) -> BackfillConfig:
    """Load YAML with its paths resolved against its folder; ``overrides`` (``--set``) apply
    first, as if written in the file; ``data_dir`` (or env ``BACKFILL_DATA_DIR``), relative to
    the working directory, overrides the file's value."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; pass --config PATH")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    raw = resolve_paths(apply_overrides(raw, overrides or []), p.resolve().parent)
    override = data_dir or os.environ.get("BACKFILL_DATA_DIR")
    if override:
        raw["data_dir"] = str(Path(override).expanduser().resolve())
    return parse_config(raw, str(p))
