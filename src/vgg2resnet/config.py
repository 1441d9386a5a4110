"""Typed settings loaded from params.yaml, the project's one source of configuration.

Every section rejects unknown keys, so a typo fails at load time with the key's
name and the keys that are allowed, instead of being silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from vgg2resnet.errors import UserError

DEFAULT_PARAMS = Path("params.yaml")

# The forms of the student that the gate weighs, each a file in paths.models_dir.
Variant = Literal["pytorch_fp32", "onnx_fp32", "onnx_int8"]
VARIANTS: dict[str, str] = {"pytorch_fp32": "student.pt", "onnx_fp32": "student-fp32.onnx",
                            "onnx_int8": "student-int8.onnx"}


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitParams(Section):
    val: float = Field(0.15, gt=0, lt=0.5)
    test: float = Field(0.25, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _leave_room_for_training(self) -> SplitParams:
        if self.val + self.test >= 0.8:
            raise ValueError("val + test must be < 0.8 so that training keeps at least 20%")
        return self


class PathsParams(Section):
    models_dir: Path = Path("models")
    metrics_dir: Path = Path("metrics")
    reports_dir: Path = Path("reports")
    state_dir: Path = Path("checkpoints")


class DataParams(Section):
    source: str = "demo"
    raw_dir: Path = Path("data/raw")
    prepared_dir: Path = Path("data/prepared")
    demo_image_size: int = Field(32, ge=8, le=1024)
    seed: int = 0
    split: SplitParams = SplitParams()
    categories: list[str] | None = None
    on_undecodable: Literal["error", "record", "skip"] = "error"
    max_pixels: int = Field(89_478_485, ge=1)
    incoming_dir: Path = Path("data/incoming")


class ValidationParams(Section):
    report_dir: Path = Path("reports/validation")
    min_images_per_category: int = Field(10, ge=1)
    max_imbalance_ratio: float = Field(3.0, ge=1.0)
    min_side: int = Field(8, ge=1)
    max_side: int = Field(8192, ge=1)
    allowed_modes: list[str] = ["RGB", "L", "RGBA", "P"]
    near_duplicate_max_distance: int = Field(0, ge=0, le=64)
    severity: dict[str, Literal["fail", "warn"]] = {}


class TrainParams(Section):
    """Knobs shared by the teacher fine-tune and the student distillation."""

    epochs: int = Field(4, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["sgd", "adamw"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    warmup_epochs: float = Field(0.5, ge=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    grad_clip_norm: float | None = Field(None, gt=0)
    max_steps_per_epoch: int | None = Field(None, ge=1)
    image_size: int = Field(32, ge=16)
    pretrained_weights: Path | None = None


class TeacherParams(TrainParams):
    arch: Literal["vgg16", "vgg16_bn"] = "vgg16_bn"
    checkpoint: Path | None = None
    categories_file: Path | None = None
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.02, gt=0)
    weight_decay: float = Field(5e-4, ge=0)


class DistillParams(TrainParams):
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    freeze_epochs: int = Field(0, ge=0)
    backbone_lr_mult: float = Field(1.0, gt=0)
    ema_decay: float | None = Field(None, gt=0, lt=1)
    logit_cache: bool = True
    cache_views: int = Field(4, ge=1)
    cache_check_fraction: float = Field(0.02, ge=0, le=1)
    cache_tolerance: float = Field(1e-3, gt=0)


class AugmentParams(Section):
    crop_scale_min: float = Field(0.7, gt=0, le=1)
    hflip: bool = False
    rotation_degrees: float = Field(10.0, ge=0, le=180)
    color_jitter: float = Field(0.2, ge=0, le=1)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class RuntimeParams(Section):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_workers: int = Field(0, ge=0)
    pin_memory: bool = True
    compile: bool = False
    channels_last: bool = True
    seed: int = 0


class EvaluateParams(Section):
    batch_size: int = Field(64, ge=1)
    latency_batch_size: int = Field(32, ge=1)
    latency_warmup: int = Field(3, ge=0)
    latency_runs: int = Field(20, ge=1)
    calibration_bins: int = Field(15, ge=2)


class CompressParams(Section):
    opset: int = Field(18, ge=17)
    parity_max_abs_logit: float = Field(1e-3, gt=0)
    parity_min_agreement: float = Field(99.0, ge=0, le=100)
    calibration_images: int = Field(256, ge=1)
    calibration_batch_size: int = Field(32, ge=1)
    calibration_method: Literal["minmax", "entropy", "percentile"] = "minmax"
    per_channel: bool = True


class GateParams(Section):
    min_teacher_margin: float | None = Field(20.0, ge=0, le=100)
    max_accuracy_drop: float = Field(1.0, ge=0)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    bootstrap_samples: int = Field(2000, ge=100)
    max_category_drop: float = Field(10.0, ge=0)
    max_size_mb: float = Field(120.0, gt=0)
    max_size_ratio: float = Field(0.25, gt=0)
    max_latency_ratio: float = Field(1.0, gt=0)
    min_accuracy: float | None = Field(None, ge=0, le=100)
    max_regression: float = Field(1.0, ge=0)
    min_variant_agreement: float = Field(97.0, ge=0, le=100)
    variants: list[Variant] = Field(default_factory=lambda: list(VARIANTS), min_length=1)
    prefer: Literal["smallest", "fastest", "first"] = "smallest"
    seed: int = 0


class ServingParams(Section):
    model_name: str = "vgg2resnet-classifier"
    max_batch_size: int = Field(32, ge=1)
    max_latency_ms: int = Field(10000, ge=1)
    max_concurrency: int = Field(256, ge=1)
    timeout_s: int = Field(60, ge=1)
    max_pixels: int = Field(40_000_000, ge=1)
    top_k: int = Field(3, ge=1)
    embedding_dims: int = Field(8, ge=2, le=64)


class MonitoringParams(Section):
    log_dir: Path = Path("monitoring/vgg2resnet_classifier/data")
    report_dir: Path = Path("reports/drift")
    window_hours: float = Field(24.0, gt=0)
    min_rows: int = Field(100, ge=2)
    drift_share: float = Field(0.5, gt=0, le=1)
    embedding_threshold: float = Field(0.55, gt=0.5, le=1)
    traffic_requests: int = Field(300, ge=1, le=100_000)
    event_cooldown_hours: float = Field(24.0, ge=0)
    retain_fraction: float = Field(0.0, ge=0, le=1)
    retained_dir: Path = Path("monitoring/retained")
    max_agreement_drop: float = Field(10.0, ge=0)


class OrchestrationParams(Section):
    gpu_work_pool: str | None = None
    gpu_stages: list[str] = ["teacher", "distill"]
    gpu_deployment: str = "migrate-stage/gpu"
    gpu_timeout_s: int = Field(6 * 3600, ge=60)


class Params(Section):
    paths: PathsParams = PathsParams()
    data: DataParams = DataParams()
    validation: ValidationParams = ValidationParams()
    augment: AugmentParams = AugmentParams()
    runtime: RuntimeParams = RuntimeParams()
    teacher: TeacherParams = TeacherParams()
    distill: DistillParams = DistillParams()
    evaluate: EvaluateParams = EvaluateParams()
    compress: CompressParams = CompressParams()
    gate: GateParams = GateParams()
    serving: ServingParams = ServingParams()
    monitoring: MonitoringParams = MonitoringParams()
    orchestration: OrchestrationParams = OrchestrationParams()


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
