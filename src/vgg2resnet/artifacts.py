"""Where every artifact lives: the one module that writes an artifact's file name.

`Artifacts(params)` maps the settings (`paths`, `data`, `validation`, `monitoring`) to each file
a stage reads or writes, so stages, flows, benchmarks and tests ask it instead of joining
names themselves. dvc.yaml spells the same paths with `${...}` templating;
tests/test_layout.py checks that the two agree. The folder layout of one version in the
BentoML model store is here too (`StoreLayout`), for the code that writes it (packaging) and
the code that reads it (serving, monitoring).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from vgg2resnet.config import Params, UserError

# The student's forms (config.VARIANTS), each a file in paths.models_dir, with `<name>.json`
# metadata beside it.
PRUNED_DIR = "pruned"  # the prune stage's one output folder in paths.models_dir
VARIANT_FILES: dict[str, str] = {
    "pytorch_fp32": "student.pt",
    "onnx_fp32": "student-fp32.onnx",
    "onnx_int8": "student-int8.onnx",
    "pruned_fp32": f"{PRUNED_DIR}/student-pruned-fp32.onnx",
    "pruned_int8": f"{PRUNED_DIR}/student-pruned-int8.onnx",
}
TRAINING_STAGES = ("teacher", "distill", "prune")
# Confusion matrices that the evaluate stage draws (dvc plots): the teacher's and two student forms.
CONFUSION_MODELS = ("teacher", "pytorch_fp32", "onnx_int8")
BENTOFILE = Path("services/classifier/bentofile.yaml")
DVC_LOCK = Path("dvc.lock")


def sidecar(path: Path) -> Path:
    """The metadata file beside a model file: `<name>.json`."""
    return Path(path).with_suffix(".json")


class StoreLayout:
    """The files of one promoted version's folder in the BentoML model store."""

    MODEL = "model.pt"  # a PyTorch checkpoint
    ONNX = "model.onnx"  # or an ONNX export (fp32 or int8)
    META = "model.json"  # the model's metadata, beside either
    PROJECTION = "projection.pt"  # PCA of penultimate features: the logged drift embedding
    REFERENCE = "reference.parquet"  # the drift baseline of this version

    @classmethod
    def model_file(cls, artifact: Path) -> str:
        """Where a models/ artifact goes in the folder: model.onnx for an export, else model.pt."""
        return cls.ONNX if Path(artifact).suffix == ".onnx" else cls.MODEL

    @classmethod
    def model_in(cls, folder: Path) -> Path:
        """The model file of a version's folder, whichever form was promoted."""
        onnx = Path(folder) / cls.ONNX
        return onnx if onnx.is_file() else Path(folder) / cls.MODEL


@dataclass(frozen=True)
class Artifacts:
    """Every path a stage reads or writes, from the settings."""

    params: Params

    # data
    @property
    def raw_dir(self) -> Path:
        return self.params.data.raw_dir

    @property
    def prepared_dir(self) -> Path:
        return self.params.data.prepared_dir

    @property
    def manifest(self) -> Path:
        return self.prepared_dir / "manifest.parquet"

    @property
    def categories(self) -> Path:
        return self.prepared_dir / "categories.json"

    def source_record(self, name: str) -> Path:
        """A record of the `sources` stage (`vgg2resnet.data.sources.SOURCE_RECORDS`): `<name>.json`."""
        return self.params.data.sources_dir / f"{name}.json"

    @property
    def source_hashes(self) -> Path:
        """The `sources` stage's content hashes by stat key (local state, like `source_stats`)."""
        return self.params.paths.state_dir / "sources"

    @property
    def skipped(self) -> Path:
        """Files that data.on_undecodable: skip left out, by their path in the user's folder."""
        return self.prepared_dir / "skipped.json"

    # validation
    @property
    def validation_dir(self) -> Path:
        return self.params.validation.report_dir

    @property
    def validation_result(self) -> Path:
        return self.validation_dir / "result.json"

    @property
    def validation_docs(self) -> Path:
        return self.validation_dir / "docs"

    @property
    def validation_docs_index(self) -> Path:
        return self.validation_docs / "index.html"

    # models
    @property
    def teacher(self) -> Path:
        return self.params.paths.models_dir / "teacher.pt"

    def student(self, variant: str = "pytorch_fp32") -> Path:
        return self.params.paths.models_dir / VARIANT_FILES[variant]

    @property
    def pruned_dir(self) -> Path:
        """The prune stage's output: the pruned forms and prune.json (alone when prune.enabled is false)."""
        return self.params.paths.models_dir / PRUNED_DIR

    @property
    def pruning_record(self) -> Path:
        return self.pruned_dir / "prune.json"

    def training_metrics(self, stage: str) -> Path:
        """metrics/<stage>/: metrics.json, and learning curves under plots/ when the stage trained."""
        return self.params.paths.metrics_dir / stage

    def training_state(self, stage: str) -> Path:
        """A training stage's resumable state (deleted once the stage finishes)."""
        return self.params.paths.state_dir / stage / "last.pt"

    @property
    def run_lock(self) -> Path:
        """Held by whatever runs stages in this project (vgg2resnet.locking)."""
        return self.params.paths.state_dir / "run.lock"

    @property
    def source_stats(self) -> Path:
        """What `prepare` last saw of each file of data.source (local state, not a DVC output:
        it describes this machine's files, and a change to it must not re-trigger validation)."""
        return self.params.paths.state_dir / "prepare" / "source-stats.parquet"

    def logit_cache(self, key: str) -> Path:
        """The teacher-logit cache's folder of chunks (distill.logit_cache), one per cache key."""
        return self.params.paths.state_dir / "distill" / f"teacher-logits-{key}"

    # evaluation, gate, package
    @property
    def evaluation_dir(self) -> Path:
        return self.params.paths.metrics_dir / "evaluate"

    @property
    def evaluation_report(self) -> Path:
        return self.evaluation_dir / "report.json"

    @property
    def evaluation_metrics(self) -> Path:
        return self.evaluation_dir / "metrics.json"

    @property
    def predictions(self) -> Path:
        return self.evaluation_dir / "predictions.parquet"

    def confusion(self, model: str) -> Path:
        return self.evaluation_dir / "plots" / "sklearn" / f"confusion_{model}.json"

    @property
    def gate_json(self) -> Path:
        return self.params.paths.reports_dir / "gate.json"

    @property
    def gate_markdown(self) -> Path:
        return self.params.paths.reports_dir / "gate.md"

    @property
    def gate_html(self) -> Path:
        return self.params.paths.reports_dir / "gate.html"

    @property
    def package_json(self) -> Path:
        return self.params.paths.reports_dir / "package.json"

    # monitoring
    @property
    def drift_dir(self) -> Path:
        return self.params.monitoring.report_dir

    @property
    def drift_trend(self) -> Path:
        return self.drift_dir / "trend.html"

    @property
    def last_drift_event(self) -> Path:
        return self.drift_dir / "last_event.json"

    @property
    def drift_event_lock(self) -> Path:
        """Held while a monitor checks the cool-down and emits a drift event."""
        return self.drift_dir / "last_event.lock"

    def drift_report(self, stamp: str, suffix: str) -> Path:
        """One monitor run's report: `<stamp>.html` (Evidently) or `<stamp>.json` (summary)."""
        return self.drift_dir / f"{stamp}{suffix}"


def require(path: Path, produced_by: str) -> Path:
    """A stage's output file, or a UserError naming the stage to run first."""
    if not Path(path).is_file():
        raise UserError(f"{path}: not found; run `vgg2resnet {produced_by}` (or `dvc repro {produced_by}`) first")
    return Path(path)


def read_json(path: Path, produced_by: str) -> dict:
    """A stage's JSON output (see `require`)."""
    return json.loads(require(path, produced_by).read_text())
