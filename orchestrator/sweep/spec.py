"""Sweep spec: a base train config, a search over its fields, resources and storage; expands to trials.

Pure pydantic + yaml: `spottune plan` loads this without torch.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import random
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, ValidationError, WithJsonSchema, field_validator,
    model_validator,
)

from cluster.errors import ClusterError
from cluster.providers.registry import names as provider_names, settings_model
from cluster.storage import StorageURI, check_endpoint, parse_uri, refuse_credentials
from cost_models.waiting import DEFAULT_DELAY_USD_PER_HOUR
from orchestrator.errors import SpecError
from orchestrator.sweep.pruning import EarlyStopping
from orchestrator.run.tracking import TrackingSettings
from runspec.config import CheckpointPolicy, TrainConfig
from runspec.config_errors import describe_validation_error, read_yaml
from runspec.config_types import MAX_SEED, Integer, Number
from runspec.errors import ConfigError


MAX_TRIALS = 10_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class LogUniform(_Strict):
    log_uniform: tuple[Number, Number]

    @model_validator(mode="after")
    def _positive_range(self) -> "LogUniform":
        low, high = self.log_uniform
        if not 0 < low <= high:
            raise ValueError(f"log_uniform needs 0 < low <= high, got [{low:g}, {high:g}]")
        return self


class Uniform(_Strict):
    uniform: tuple[Number, Number]

    @model_validator(mode="after")
    def _ordered_range(self) -> "Uniform":
        low, high = self.uniform
        if low > high:
            raise ValueError(f"uniform needs low <= high, got [{low:g}, {high:g}]")
        return self


Distribution = Union[list[Any], LogUniform, Uniform]


class Search(_Strict):
    method: Literal["grid", "random", "optuna"] = Field(
        "grid", description="grid: every combination; random: `samples` draws; optuna: `samples` trials whose "
        "parameters Optuna's TPE sampler draws at launch from the results of the trials before them."
    )
    parameters: dict[str, Distribution] = Field(
        default_factory=dict,
        description="Dotted train-config field -> list of values (grid or random choice), or "
        "{log_uniform: [lo, hi]} / {uniform: [lo, hi]} (random and optuna only).",
    )
    samples: Integer | None = Field(
        None, ge=1, le=MAX_TRIALS, description="Number of trials (random and optuna search)."
    )
    seed: Integer = Field(0, ge=0, le=MAX_SEED, description="Seed of the random search and of the optuna sampler.")
    startup_trials: Integer | None = Field(
        None, ge=1, le=MAX_TRIALS,
        description="optuna: trials drawn at random before TPE takes over (default: a third of samples).",
    )

    @field_validator("parameters")
    @classmethod
    def _non_empty_lists(cls, parameters: dict[str, Distribution]) -> dict[str, Distribution]:
        for name, values in parameters.items():
            if isinstance(values, list) and not values:
                raise ValueError(f"search.parameters.{name} is an empty list; give at least one value")
        return parameters


def _storage_location(value: Any) -> StorageURI:
    """The one place a sweep's storage text becomes a StorageURI; everything downstream gets the typed value."""
    if isinstance(value, StorageURI):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a storage location: file://PATH, s3://BUCKET/PREFIX or a local path")
    try:
        return parse_uri(value)
    except ClusterError as error:
        raise ValueError(str(error).removeprefix("storage: ")) from None


StorageLocation = Annotated[
    StorageURI, BeforeValidator(_storage_location), PlainSerializer(str, return_type=str),
    WithJsonSchema({"type": "string"}),
]


class Resources(_Strict):
    gpus: list[str] | None = Field(None, description="Allowed GPU types (catalog names); null = any.")
    providers: list[str] = Field(default_factory=lambda: ["local"], description="Providers to place trials on.")
    market: Literal["spot", "on-demand", "any"] = Field("spot", description="Capacity type to rent.")
    gpus_per_trial: Integer = Field(1, ge=1, le=64, description="GPUs (Ray Train workers) per trial, on all its nodes.")
    nodes_per_trial: Integer = Field(
        1, ge=1, le=16, description="Machines one trial spans (one Ray cluster); each holds gpus_per_trial / nodes_per_trial GPUs.",
    )
    max_price_per_hour: Number | None = Field(None, gt=0, le=10_000, description="Most $/h one trial may cost.")
    max_total_cost: Number | None = Field(None, gt=0, le=10_000_000, description="Budget in $ for the whole sweep.")
    vram_headroom: Number = Field(
        0.03, ge=0, lt=0.5, description="Share of each GPU's memory kept free beyond the estimate's upper bound."
    )
    delay_usd_per_hour: Number = Field(
        DEFAULT_DELAY_USD_PER_HOUR, ge=0, le=10_000,
        description="What an hour of a trial's wait for cheaper capacity is worth; the planner waits when cheaper.",
    )

    @model_validator(mode="after")
    def _whole_nodes(self) -> "Resources":
        if self.gpus_per_trial % self.nodes_per_trial:
            raise ValueError(f"gpus_per_trial ({self.gpus_per_trial}) must be a multiple of nodes_per_trial "
                             f"({self.nodes_per_trial}): every node of a trial holds as many GPUs")
        return self

    @property
    def gpus_per_node(self) -> int:
        return self.gpus_per_trial // self.nodes_per_trial


ProviderSettings = settings_model()


class SweepSpec(_Strict):
    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$", description="Sweep name (run ids derive from it).")
    base: str | None = Field(None, description="Path of a train YAML (relative to this spec file).")
    config: dict[str, Any] = Field(default_factory=dict, description="Inline train config, merged over `base`.")
    search: Search = Field(default_factory=Search)
    resources: Resources = Field(default_factory=Resources)
    storage: StorageLocation = Field(
        "file://./runs", validate_default=True,
        description="Where checkpoints and adapters go: file://PATH or s3://BUCKET/PREFIX.",
    )
    storage_endpoint: str | None = Field(
        None, description="Endpoint URL of an S3-compatible service (else AWS_ENDPOINT_URL_S3, else AWS)."
    )
    checkpoint: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    max_parallel: Integer = Field(2, ge=1, le=256, description="Trials running at the same time.")
    max_error_retries: Integer = Field(
        2, ge=0, le=100, description="Relaunches after real errors (preemptions are not counted)."
    )
    early_stopping: EarlyStopping = Field(
        default_factory=EarlyStopping, description="Stop losing trials early (Optuna pruners on eval loss)."
    )
    tracking: TrackingSettings = Field(
        default_factory=TrackingSettings, description="Experiment tracking: MLflow (default on) and W&B."
    )
    provider_settings: ProviderSettings = Field(
        default_factory=ProviderSettings,
        description=f"Settings per provider, each checked by the provider's own model: {', '.join(provider_names())} "
        "(local: `market`, the simulated spot market's preemptions and storage faults).",
    )


class TrialSpec(BaseModel):
    """One point of the search: its stable id, the overridden fields and the full train config."""

    id: str
    index: int
    params: dict[str, Any]
    config: TrainConfig


def set_dotted(target: dict, dotted: str, value: Any) -> None:
    """Set a dotted field (`training.learning_rate`) in a nested config mapping."""
    *parents, leaf = dotted.split(".")
    node = target
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"'search.parameters.{dotted}': '{part}' is not a config section")
    node[leaf] = value


def with_params(config: dict, params: dict[str, Any]) -> dict:
    """A copy of a config mapping with a trial's search parameters (dotted fields) set."""
    result = copy.deepcopy(config)
    for name, value in params.items():
        set_dotted(result, name, value)
    return result


def _merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _points(search: Search, source: str) -> list[dict[str, Any]]:
    names = list(search.parameters)
    if search.method == "grid":
        lists = []
        for name in names:
            values = search.parameters[name]
            if not isinstance(values, list):
                raise SpecError(f"{source}: field 'search.parameters.{name}': grid search needs a list of values")
            lists.append(values)
        size = math.prod(len(values) for values in lists)
        if size > MAX_TRIALS:
            raise SpecError(f"{source}: field 'search.parameters': the grid has {size:,} points; "
                            f"accepted: at most {MAX_TRIALS:,} trials (narrow the lists or use random search)")
        return [dict(zip(names, combination)) for combination in itertools.product(*lists)] if names else [{}]
    if not search.samples:
        raise SpecError(f"{source}: field 'search.samples': {search.method} search needs samples >= 1")
    if search.method == "optuna":  # drawn at launch by the controller; the index keeps each trial's id apart
        return [{} for _ in range(search.samples)]
    generator = random.Random(search.seed)
    points = []
    for _ in range(search.samples):
        point = {}
        for name in names:
            distribution = search.parameters[name]
            if isinstance(distribution, list):
                point[name] = generator.choice(distribution)
            elif isinstance(distribution, LogUniform):
                low, high = distribution.log_uniform
                point[name] = math.exp(generator.uniform(math.log(low), math.log(high)))
            else:
                low, high = distribution.uniform
                point[name] = generator.uniform(low, high)
        points.append(point)
    return points


def trial_id(index: int, params: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:6]
    return f"t{index:03d}-{digest}"


def base_config(spec: SweepSpec, spec_dir: Path, source: str) -> dict:
    raw: dict = {}
    if spec.base:
        path = Path(spec.base) if Path(spec.base).is_absolute() else spec_dir / spec.base
        if not path.is_file():
            raise SpecError(f"{source}: field 'base': train config {path} not found")
        loaded = read_yaml(path, SpecError)
        if not isinstance(loaded, dict):
            raise SpecError(f"{path}: expected a mapping of sections (model, data, ...)")
        raw = loaded
    return _merge(raw, spec.config)


def expand_trials(spec: SweepSpec, spec_dir: Path, source: str) -> list[TrialSpec]:
    """Every trial's full config; each is validated like a train YAML, errors naming the trial and field."""
    base = base_config(spec, spec_dir, source)
    trials = []
    for index, params in enumerate(_points(spec.search, source)):
        raw = copy.deepcopy(base)
        for name, value in params.items():
            try:
                set_dotted(raw, name, value)
            except SpecError as error:
                raise SpecError(f"{source}: field {error}") from None
        raw.setdefault("checkpoint", {})["keep"] = spec.checkpoint.keep
        if isinstance(spec.checkpoint.every_steps, int):
            raw["checkpoint"]["every_steps"] = spec.checkpoint.every_steps
            if spec.early_stopping.enabled:  # judge trials at checkpoint boundaries
                raw.setdefault("training", {}).setdefault("eval_every", spec.checkpoint.every_steps)
        identifier = trial_id(index, params)
        try:
            config = TrainConfig.model_validate(raw)
        except ValidationError as error:
            raise SpecError(describe_validation_error(f"{source} (trial {identifier})", TrainConfig, error)) from None
        except ConfigError as error:
            raise SpecError(str(error)) from None
        for field in ("train", "eval"):
            value = getattr(config.data, field)
            if value and not Path(value).is_absolute() and (spec_dir / value).exists():
                setattr(config.data, field, str(spec_dir / value))
        trials.append(TrialSpec(id=identifier, index=index, params=params, config=config))
    return trials


def _check_uris(raw: dict, path: Path) -> None:
    """Storage locations and the endpoint, before pydantic sees them (its errors would repeat a secret)."""
    try:
        for field in ("storage", "config.output_dir"):
            if isinstance(raw.get(field), str):
                refuse_credentials(raw[field], f"field '{field}'")
        if isinstance(raw.get("storage_endpoint"), str):
            check_endpoint(raw["storage_endpoint"], "field 'storage_endpoint'")
    except ClusterError as error:
        raise SpecError(f"{path}: {error}") from None


def _check_search_fields(spec: SweepSpec, path: Path) -> None:
    """An optuna search draws its values later: check now that each field takes the ends of its range."""
    base = base_config(spec, path.parent, str(path))
    for name, distribution in spec.search.parameters.items():
        if isinstance(distribution, list):
            candidates = distribution
        else:
            candidates = list(distribution.log_uniform if isinstance(distribution, LogUniform) else distribution.uniform)
        for value in candidates:
            raw = copy.deepcopy(base)
            set_dotted(raw, name, value)
            try:
                TrainConfig.model_validate(raw)
            except ValidationError as error:
                raise SpecError(describe_validation_error(f"{path} (search.parameters.{name}={value})",
                                                          TrainConfig, error)) from None


def load_spec(path: str | Path) -> tuple[SweepSpec, list[TrialSpec]]:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: sweep spec not found")
    raw = read_yaml(path, SpecError)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping with name, base/config, search, resources, storage")
    _check_uris(raw, path)
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(describe_validation_error(str(path), SweepSpec, error)) from None
    trials = expand_trials(spec, path.parent, str(path))
    for trial in trials:
        _check_uris({"config.output_dir": trial.config.output_dir}, path)
    if spec.search.method == "optuna":
        _check_search_fields(spec, path)
    if spec.early_stopping.enabled:
        config = trials[0].config
        if not config.data.eval:
            raise SpecError(f"{path}: field 'early_stopping': trials are judged by eval loss; set data.eval")
        if config.training.eval_every is None:
            raise SpecError(f"{path}: field 'early_stopping': set training.eval_every or an integer "
                            "checkpoint.every_steps, the steps at which trials are judged")
    for name in provider_names():
        check_trials = getattr(getattr(spec.provider_settings, name), "unknown_trials", None)
        problem = check_trials([trial.id for trial in trials]) if check_trials else ""
        if problem:
            raise SpecError(f"{path}: {problem}")
    return spec, trials
