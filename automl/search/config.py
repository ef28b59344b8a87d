"""Typed experiment configuration for `automl search`, loaded from YAML in experiments/.

Pydantic models with `extra="forbid"`: an unknown key or a bad value is an error that names the
field (e.g. ``budget.max_mac_ratio: Input should be less than or equal to 1``), never a silently
ignored typo in a 10-minute search.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A config file is missing, not YAML, or fails validation; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    name: str = Field("resnet20", description="zoo name or package.module:factory")
    checkpoint: str | None = Field(None, description="trained checkpoint; default: train (or reuse) one")
    train_epochs: int = Field(3, ge=0, description="epochs for the base model when no checkpoint is given")
    train_limit: int | None = Field(None, ge=100, description="train the base model on this many images only")


class DatasetConfig(_Strict):
    name: str = "fashion-mnist"
    data_dir: str | None = None
    limit: int | None = Field(None, ge=100, description="use only this many training images for fine-tuning")
    test_limit: int | None = Field(None, ge=10)


class AgentConfig(_Strict):
    name: str = "random"
    options: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = Field(None, description="the agent's seed; default: the top-level seed (which also "
                                               "seeds the base model and the data splits)")


class BudgetConfig(_Strict):
    max_latency_ms: float | None = Field(None, gt=0, description="absolute latency budget on the configured runtime")
    max_latency_ratio: float | None = Field(None, gt=0, le=1, description="budget as a fraction of dense latency")
    max_mac_ratio: float | None = Field(None, gt=0, le=1)
    max_size_mb: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_budget(self) -> BudgetConfig:
        if self.max_latency_ms is not None and self.max_latency_ratio is not None:
            raise ValueError("give max_latency_ms or max_latency_ratio, not both")
        return self

    def is_empty(self) -> bool:
        return all(v is None for v in self.model_dump().values())


class LatencyConfig(_Strict):
    runtime: str = Field("onnxruntime", description="runtime that will run the model (latency_models registry)")
    batch: int = Field(1, ge=1)
    threads: int = Field(1, ge=1)
    precision: Literal["fp32", "int8"] = "fp32"
    profile: str | None = Field(None, description="device profile JSON; default: build/cached for this machine")
    profile_minutes: float = Field(1.5, gt=0, le=120)
    device: str | None = Field(None, description="remote device agent URL (http://host:port); default: this machine")
    measure_top_k: int = Field(3, ge=0, description="re-measure this many best candidates on the real runtime")
    widen_free_channels: bool = Field(True, description=(
        "before fine-tuning the top candidates, raise each channel group's kept count to the next whole block "
        "of the runtime's blocked layout (onnxruntime fp32's NCHWc: 8 or 16 channels) wherever the profile "
        "predicts no slowdown: channels the runtime computes anyway are kept, not pruned"))
    calibrate: bool = Field(True, description=(
        "scale the in-loop predictions by measured / predicted latency of the dense model (measured at the "
        "search's start), so they hold at the machine's current speed; false: the profile's own figures"))


class EvaluationConfig(_Strict):
    proxy_val_images: int = Field(1000, ge=10, description="validation images for the in-loop proxy accuracy")
    calib_batches: int = Field(4, ge=0, description="training batches for BN recalibration")
    proxy_finetune_steps: int = Field(0, ge=0, le=10_000, description=(
        "SGD steps (batch 128, masks kept) on fixed training images before the proxy accuracy; 0: BN "
        "recalibration only. Use 20-50 when the budget removes most MACs and every candidate scores near chance"))
    proxy_finetune_lr: float = Field(0.01, gt=0)
    finetune_top_k: int = Field(2, ge=0, description="fine-tune this many best candidates after the search")
    finetune_epochs: float = Field(1.0, ge=0)
    finetune_lr: float = Field(0.01, gt=0, description="SGD lr (cosine schedule) of that fine-tune")


class RayConfig(_Strict):
    address: str | None = Field(None, description="existing cluster address; default: embedded local Ray")
    workers: int = Field(2, ge=1, description="concurrent trials")
    cpus_per_trial: float = Field(1.0, gt=0)
    object_store_mb: int = Field(300, ge=80)
    max_retries: int = Field(2, ge=0, description="retries of a trial whose worker died")


class TrackingConfig(_Strict):
    uri: str | None = Field(None, description="MLflow tracking URI; default: sqlite in $AUTOML_HOME")
    experiment: str = "compress-search"


class SpaceConfigModel(BaseModel):
    """Passed through to search_spaces.SpaceConfig.from_dict, which validates it."""

    model_config = ConfigDict(extra="allow", frozen=True)


class SearchConfig(_Strict):
    """One search: what to compress, for which device/runtime, under which budget, by which agent."""

    name: str = Field("search", pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelConfig = Field(default_factory=ModelConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    space: dict[str, Any] = Field(default_factory=dict, description="search space options (search_spaces.SpaceConfig)")
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)
    objectives: list[Literal["accuracy", "latency_ms", "mac_ratio", "size_bytes"]] = Field(
        default_factory=lambda: ["accuracy", "latency_ms"])
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    candidates: int = Field(20, ge=1, le=100_000)
    baseline_candidates: list[Literal["uniform_channel"]] = Field(
        default_factory=lambda: ["uniform_channel"], description=(
            "baselines evaluated first, as candidates counted in `candidates` and ranked like the agent's: "
            "uniform_channel = the same channel sparsity on every layer (kept channels rounded to 8), as "
            "much as the budget allows. A search then never recommends a policy its own ranking puts under "
            "the obvious baseline; [] evaluates the agent's proposals only (e.g. to compare agents)"))
    seed: int = 0
    ray: RayConfig = Field(default_factory=RayConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @field_validator("objectives")
    @classmethod
    def _accuracy_first(cls, v: list[str]) -> list[str]:
        if not v or v[0] != "accuracy":
            raise ValueError("the first objective must be 'accuracy'")
        return v

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> SearchConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(f"{source}: " + format_validation_error(exc)) from None

    @classmethod
    def from_yaml(cls, path: str | Path) -> SearchConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist (see experiments/quickstart.yaml for an example)")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        return cls.from_dict(data, str(path))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def flat_params(self) -> dict[str, str]:
        """Flattened `section.key` -> value strings, for MLflow params."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value:
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            else:
                out[prefix] = str(value)[:500]

        walk("", self.model_dump(mode="json"))
        return out


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem: `field.path: message`."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see experiments/quickstart.yaml)"
        lines.append(f"{loc}: {msg}")
    return "; ".join(lines)
