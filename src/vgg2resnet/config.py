"""Typed settings loaded from params.yaml, the project's one source of configuration, and the
error that means "the user's input is wrong".

params.yaml holds every value (with a comment saying what it does); the classes here hold
only types and bounds, so there is no second default to drift from it. Every section rejects
unknown keys and requires every known one, so a typo or a key missing after an upgrade fails
at load time with the key's name, instead of being silently ignored or silently defaulted.
Values are checked, not coerced: `true` is not an epoch count, `"3"` is not a number, an empty
path is not the project root, and infinity is not a temperature.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)

DEFAULT_PARAMS = Path("params.yaml")


class UserError(Exception):
    """Bad input from the user (a file, a folder, a params key) with a message saying how to fix
    it: the CLI prints it and exits with `exit_code`."""

    exit_code = 2


# The forms of the student that the gate weighs, each a file under paths.models_dir: the
# distilled ResNet-50 (PyTorch, ONNX fp32, ONNX int8) and its channel-pruned, fine-tuned
# descendant (ONNX fp32, ONNX int8), which the `prune` stage makes when prune.enabled.
Variant = Literal["pytorch_fp32", "onnx_fp32", "onnx_int8", "pruned_fp32", "pruned_int8"]
VARIANTS: tuple[str, ...] = get_args(Variant)
PRUNED_VARIANTS: tuple[str, ...] = ("pruned_fp32", "pruned_int8")
# The fp32 form of each variant's network, which its `fp32_agreement` is measured against: a
# broken export or calibration shows there. The pruned network was fine-tuned, so it is a new
# student (the gate holds it to the teacher like the first), and its int8 form follows it.
FP32_FORM: dict[str, str] = {
    "pytorch_fp32": "pytorch_fp32",
    "onnx_fp32": "pytorch_fp32",
    "onnx_int8": "pytorch_fp32",
    "pruned_fp32": "pruned_fp32",
    "pruned_int8": "pruned_fp32",
}


# The stages of dvc.yaml, in its order (tests/test_layout.py holds the two equal).
Stage = Literal[
    "sources", "prepare", "validate", "teacher", "distill", "compress", "prune", "evaluate", "gate", "package"
]


def _path_setting(value: Any) -> Path:
    if isinstance(value, Path) or (isinstance(value, str) and value.strip()):
        return Path(value)
    raise ValueError("must be a path (a non-empty string); an empty one would mean the project root")


# A path given as a string in params.yaml: neither empty nor a number.
SettingPath = Annotated[Path, BeforeValidator(_path_setting)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class SplitParams(Section):
    val: float = Field(gt=0, lt=0.5)
    test: float = Field(gt=0, lt=0.5)

    @model_validator(mode="after")
    def _leave_room_for_training(self) -> SplitParams:
        if self.val + self.test >= 0.8:
            raise ValueError("val + test must be < 0.8 so that training keeps at least 20%")
        return self


class PathsParams(Section):
    models_dir: SettingPath
    metrics_dir: SettingPath
    reports_dir: SettingPath
    state_dir: SettingPath


class DataParams(Section):
    source: str = Field(min_length=1)
    raw_dir: SettingPath
    prepared_dir: SettingPath
    sources_dir: SettingPath
    demo_image_size: int = Field(ge=8, le=1024)
    seed: int
    split: SplitParams
    categories: list[str] | None
    on_undecodable: Literal["error", "record", "skip"]
    max_pixels: int = Field(ge=1)
    reuse_by_stat: bool
    shard_bytes: int = Field(ge=1 << 20)
    follow_external_links: bool
    incoming_dir: SettingPath


class ValidationParams(Section):
    report_dir: SettingPath
    min_images_per_category: int = Field(ge=1)
    max_imbalance_ratio: float = Field(ge=1.0)
    min_side: int = Field(ge=1)
    max_side: int = Field(ge=1)
    max_aspect_ratio: float = Field(ge=1)
    allowed_modes: list[str]
    near_duplicate_max_distance: int = Field(ge=0, le=64)
    severity: dict[str, Literal["fail", "warn"]]

    @model_validator(mode="after")
    def _sides_in_order(self) -> ValidationParams:
        if self.min_side > self.max_side:
            raise ValueError(
                f"min_side ({self.min_side}) is above max_side ({self.max_side}): no image could pass; swap them"
            )
        return self


class TrainParams(Section):
    """Knobs shared by the teacher fine-tune and the student distillation."""

    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    optimizer: Literal["sgd", "adamw"]
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    momentum: float = Field(ge=0, lt=1)
    warmup_epochs: float = Field(ge=0)
    label_smoothing: float = Field(ge=0, lt=1)
    grad_clip_norm: float | None = Field(gt=0)
    max_steps_per_epoch: int | None = Field(ge=1)
    image_size: int = Field(ge=16)
    pretrained_weights: SettingPath | None


class TeacherParams(TrainParams):
    arch: Literal["vgg16", "vgg16_bn"]
    checkpoint: SettingPath | None
    categories_file: SettingPath | None


class DistillParams(TrainParams):
    temperature: float = Field(gt=0)
    alpha: float = Field(ge=0, le=1)
    freeze_epochs: int = Field(ge=0)
    backbone_lr_mult: float = Field(gt=0)
    ema_decay: float | None = Field(gt=0, lt=1)
    average_best: int | None = Field(ge=1)
    logit_cache: bool
    cache_views: int = Field(ge=1)
    cache_check_fraction: float = Field(ge=0, le=1)
    cache_tolerance: float = Field(gt=0)
    cache_dtype: Literal["float16", "float32"]
    cache_top_k: int | None = Field(ge=1)
    cache_chunk_images: int = Field(ge=1)


class AugmentParams(Section):
    crop_scale_min: float = Field(gt=0, le=1)
    hflip: bool
    rotation_degrees: float = Field(ge=0, le=180)
    color_jitter: float = Field(ge=0, le=1)
    mean: list[float] = Field(min_length=3, max_length=3)
    std: list[Annotated[float, Field(gt=0)]] = Field(min_length=3, max_length=3)


def _worker_setting(value: Any) -> int | str:
    if value == "auto" or (type(value) is int and value >= 0):
        return value
    raise ValueError("must be 'auto' (one per CPU core) or a whole number >= 0 (0: the main process)")


def _process_setting(value: Any) -> int | str:
    if value == "auto" or (type(value) is int and value >= 1):
        return value
    raise ValueError("must be 'auto' (one per visible GPU, else 1) or a whole number >= 1")


# One error naming the key, not one per branch of the union.
WorkerSetting = Annotated[Literal["auto"] | int, PlainValidator(_worker_setting)]
ProcessSetting = Annotated[Literal["auto"] | int, PlainValidator(_process_setting)]


class RuntimeParams(Section):
    device: Literal["auto", "cpu", "cuda"]
    processes: ProcessSetting
    num_workers: WorkerSetting
    prefetch_factor: int = Field(ge=1)
    pin_memory: bool
    compile: bool
    channels_last: bool
    seed: int


class EvaluateParams(Section):
    batch_size: int = Field(ge=1)
    latency_batch_size: int = Field(ge=1)
    latency_warmup: int = Field(ge=0)
    latency_runs: int = Field(ge=1)
    calibration_bins: int = Field(ge=2)


class CompressParams(Section):
    opset: int = Field(ge=17)
    parity_max_abs_logit: float = Field(gt=0)
    parity_min_agreement: float = Field(ge=0, le=100)
    calibration_images: int = Field(ge=1)
    calibration_batch_size: int = Field(ge=1)
    calibration_method: Literal["minmax", "entropy", "percentile"]
    per_channel: bool


class PruneParams(Section):
    enabled: bool
    flops_ratio: float = Field(gt=0, lt=1)
    round_to: int | None = Field(ge=1)
    epochs: int = Field(ge=1)
    lr: float = Field(gt=0)


class GateParams(Section):
    min_teacher_margin: float | None = Field(ge=0, le=100)
    max_accuracy_drop: float = Field(ge=0)
    confidence: float = Field(gt=0.5, lt=1)
    bootstrap_samples: int = Field(ge=100)
    max_category_drop: float = Field(ge=0)
    max_size_mb: float = Field(gt=0)
    max_size_ratio: float = Field(gt=0)
    max_latency_ratio: float = Field(gt=0)
    min_accuracy: float | None = Field(ge=0, le=100)
    max_regression: float = Field(ge=0)
    min_variant_agreement: float = Field(ge=0, le=100)
    variants: list[Variant] = Field(min_length=1)
    prefer: Literal["smallest", "fastest", "first"]
    seed: int


class ServingParams(Section):
    model_name: str = Field(min_length=1)
    max_batch_size: int = Field(ge=1)
    max_latency_ms: int = Field(ge=1)
    max_concurrency: int = Field(ge=1)
    timeout_s: int = Field(ge=1)
    max_image_area: int = Field(ge=1)
    max_request_area: int = Field(ge=1)
    max_bytes_per_pixel: float = Field(gt=0)
    top_k: int = Field(ge=1)
    embedding_dims: int = Field(ge=2, le=64)
    auth_token_env: str | None = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    allow_network_without_token: bool

    @model_validator(mode="after")
    def _budget_within_timeout(self) -> ServingParams:
        # A request that waits longer than timeout_s has already been answered 504, so a larger
        # budget would never shed anything: it is a mistake for a shorter one.
        if self.max_latency_ms > self.timeout_s * 1000:
            raise ValueError(
                f"max_latency_ms ({self.max_latency_ms}) exceeds timeout_s * 1000 "
                f"({self.timeout_s * 1000}): lower max_latency_ms or raise timeout_s"
            )
        return self

    @model_validator(mode="after")
    def _one_image_within_the_request_budget(self) -> ServingParams:
        if self.max_image_area > self.max_request_area:
            raise ValueError(
                f"max_image_area ({self.max_image_area}) exceeds max_request_area ({self.max_request_area}): "
                "an image the service admits alone could never be sent; lower max_image_area or raise "
                "max_request_area"
            )
        return self


class MonitoringParams(Section):
    log_dir: SettingPath
    report_dir: SettingPath
    window_hours: float = Field(gt=0)
    min_rows: int = Field(ge=2)
    drift_share: float = Field(gt=0, le=1)
    embedding_threshold: float = Field(gt=0.5, le=1)
    traffic_requests: int = Field(ge=1, le=100_000)
    event_cooldown_hours: float = Field(ge=0)
    retain_fraction: float = Field(ge=0, le=1)
    retained_dir: SettingPath
    max_agreement_drop: float = Field(ge=0)
    agreement_confidence: float = Field(gt=0.5, lt=1)
    projection_images: int = Field(ge=16)
    reference_images: int = Field(ge=16)


class OrchestrationParams(Section):
    gpu_work_pool: str | None
    gpu_stages: list[Stage]
    gpu_deployment: str
    gpu_timeout_s: int = Field(ge=60)
    gpu_poll_s: float = Field(gt=0)


class ReportParams(Section):
    max_gallery_images: int = Field(ge=0)
    thumbnail_px: int = Field(ge=16, le=512)


class Params(Section):
    paths: PathsParams
    data: DataParams
    validation: ValidationParams
    augment: AugmentParams
    runtime: RuntimeParams
    teacher: TeacherParams
    distill: DistillParams
    evaluate: EvaluateParams
    compress: CompressParams
    prune: PruneParams
    gate: GateParams
    report: ReportParams
    serving: ServingParams
    monitoring: MonitoringParams
    orchestration: OrchestrationParams

    @model_validator(mode="after")
    def _something_to_promote(self) -> Params:
        if not self.prune.enabled and set(self.gate.variants) <= set(PRUNED_VARIANTS):
            raise ValueError(
                f"gate.variants {self.gate.variants} lists only pruned forms, which prune.enabled: "
                "false does not make; add pytorch_fp32, onnx_fp32 or onnx_int8, or enable prune"
            )
        return self


def built_variants(params: Params) -> tuple[str, ...]:
    """The student forms this configuration makes: all of VARIANTS, less the pruned ones when
    prune.enabled is false (the gate then weighs the others, whatever gate.variants lists)."""
    return VARIANTS if params.prune.enabled else tuple(v for v in VARIANTS if v not in PRUNED_VARIANTS)


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    """One line per pydantic error: the dotted key, what is wrong and what is allowed."""
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        section: Any = model
        for part in error["loc"][:-1]:
            field = section.model_fields.get(str(part)) if isinstance(section, type) else None
            section = field.annotation if field else None
        allowed = sorted(section.model_fields) if isinstance(section, type) else []
        return f"unknown key '{key}'; allowed keys here: {', '.join(allowed)}"
    if error["type"] == "missing":
        return (
            f"missing key '{key}': every setting is given in params.yaml; copy it, with its comment, "
            "from the project's params.yaml"
        )
    return f"'{key}': {error['msg']} (got {error.get('input')!r})"


def load_params(path: Path | str = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml; raise UserError naming the file and each bad key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found; run from the project root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, Params) for e in exc.errors()]
        raise UserError(f"{path}: invalid params\n  " + "\n  ".join(lines)) from exc
