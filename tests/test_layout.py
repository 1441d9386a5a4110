"""The project's shape. dvc.yaml says exactly what each stage depends on: every setting its code
reads, every module it imports, and the same artifact paths as vgg2resnet.artifacts (otherwise
DVC would skip a stage whose inputs changed, or rerun one, and retrain a model, whose inputs did
not). And imports point one way: no two folders of the package import each other, and no stage
imports another."""

import ast
import re
import shutil
from pathlib import Path
from typing import get_args

import pytest
import yaml
from pydantic import BaseModel

from vgg2resnet.artifacts import BENTOFILE, CONFUSION_MODELS, TRAINING_STAGES, VARIANT_FILES, Artifacts
from vgg2resnet.config import PRUNED_VARIANTS, VARIANTS, Stage, load_params
from vgg2resnet.data.sources import SOURCE_RECORDS

from .conftest import ROOT, repo_params, write_params

PACKAGE = ROOT / "src" / "vgg2resnet"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_the_settings_know_the_stages_of_dvc_yaml():
    """orchestration.gpu_stages is checked against config.Stage: a typo must not run a stage locally."""
    assert list(get_args(Stage)) == list(STAGES)


# Read, but with no effect on what a stage writes: changing them must not rerun it.
NO_EFFECT = {
    "runtime.num_workers",
    "runtime.prefetch_factor",
    "runtime.pin_memory",  # how fast data loads
    "data.reuse_by_stat",  # whether prepare re-reads unchanged files: the same output either way
    "paths.state_dir",  # where resumable training state and the logit cache wait (not an output)
    "gate.min_teacher_margin",  # in `teacher`, it only words a warning; the gate's check depends on it
}


def _module_file(name: str) -> Path | None:
    parts = name.split(".")[1:]
    for candidate in (PACKAGE.joinpath(*parts).with_suffix(".py"), PACKAGE.joinpath(*parts, "__init__.py")):
        if candidate.is_file():
            return candidate
    return None


def _direct_imports(path: Path) -> set[Path]:
    """The project modules that the source at path imports, at load time or inside a function."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names if a.name.startswith("vgg2resnet")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vgg2resnet"):
            names.append(node.module)
            names += [f"{node.module}.{a.name}" for a in node.names]  # `from pkg import module`
    return {p for p in map(_module_file, names) if p is not None and (p.name != "__init__.py" or _has_code(p))}


def imported_modules(start: Path) -> set[Path]:
    """The module at `start` and every project module it imports, directly or not."""
    seen, pending = {start}, [start]
    while pending:
        for found in _direct_imports(pending.pop()) - seen:
            seen.add(found)
            pending.append(found)
    return seen


def _has_code(path: Path) -> bool:
    """Whether a module holds more than its docstring."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in body)


def _folder(path: Path) -> str:
    """The package folder a module belongs to (a top-level module is its own)."""
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def test_no_two_folders_import_each_other():
    edges: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        folder = _folder(path)
        edges.setdefault(folder, set()).update(_folder(p) for p in _direct_imports(path) if _folder(p) != folder)

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in edges.get(start, ()))

    assert sorted((a, b) for a in edges for b in edges[a] if reaches(b, a)) == []


def test_no_stage_imports_another():
    for path in (PACKAGE / "stages").glob("*.py"):
        others = {p.stem for p in _direct_imports(path) if p.parent.name == "stages" and p != path}
        assert others == set(), path.name


def _covered(path: str, deps: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


SERVICE = ROOT / "services" / "classifier" / "service.py"


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_depends_on_every_module_it_runs(stage: str):
    deps = STAGES[stage].get("deps", [])
    modules = imported_modules(PACKAGE / "stages" / f"{stage}.py")
    if stage == "package":  # it builds the service into the Bento, as its bentofile says
        modules |= imported_modules(SERVICE) | {ROOT / BENTOFILE}
    needed = sorted(p.relative_to(ROOT).as_posix() for p in modules)
    assert [p for p in needed if not _covered(p, deps)] == []
    code = [d for d in deps if d.startswith(("src/", "services/"))]
    # ...and on nothing it does not run.
    assert [d for d in code if not any(_covered(p, [d]) for p in needed)] == []


class Recorder:
    """Settings that note every key read through them, sections included."""

    def __init__(self, model: BaseModel, seen: set[str], prefix: str = "") -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_seen", seen)
        object.__setattr__(self, "_prefix", prefix)

    def _all(self) -> None:
        self._seen.update(f"{self._prefix}{key}" for key in _leaves(self._model.model_dump()))

    def __getattr__(self, name: str):
        value = getattr(self._model, name)
        if name not in type(self._model).model_fields:  # model_dump, model_copy, ...: the whole section
            self._all()
            return value
        if isinstance(value, BaseModel):
            return Recorder(value, self._seen, f"{self._prefix}{name}.")
        self._seen.add(f"{self._prefix}{name}")
        return value

    def __str__(self) -> str:  # a fingerprint hashes a whole section through its text
        self._all()
        return str(self._model)


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in tree.items():
        keys |= _leaves(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {prefix + key}
    return keys


@pytest.fixture(scope="module")
def settings_read(promoted_project: Path, tmp_path_factory) -> dict[str, set[str]]:
    """Each stage's function run on a copy of the session project, through a Recorder."""
    import contextlib
    import importlib

    project = tmp_path_factory.mktemp("settings-read") / "project"
    shutil.copytree(promoted_project, project, symlinks=True, ignore=shutil.ignore_patterns("checkpoints"))
    write_params(project, {"serving": {"model_name": "settings-read-check"}})
    read = {}
    with contextlib.chdir(project):
        params = load_params("params.yaml")
        for stage in STAGES:
            seen: set[str] = set()
            importlib.import_module(f"vgg2resnet.stages.{stage}").run(Recorder(params, seen))
            read[stage] = seen
    return read


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_lists_every_setting_it_reads(settings_read: dict[str, set[str]], stage: str):
    entry = STAGES[stage]
    listed = entry.get("params", [])
    interpolated = set(re.findall(r"\$\{([^}]+)\}", yaml.safe_dump(entry)))  # paths DVC already tracks
    unlisted = {
        key
        for key in settings_read[stage] - NO_EFFECT - interpolated
        if not any(key == p or key.startswith(f"{p}.") for p in listed)
    }
    assert sorted(unlisted) == []


def test_dvc_yaml_names_the_artifacts_where_vgg2resnet_artifacts_puts_them():
    """dvc.yaml spells artifact paths with ${...}; rendered with params.yaml they are Artifacts' paths."""
    params = repo_params()
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())

    def render(text: str) -> str:
        def value(match: re.Match) -> str:
            node = raw
            for part in match.group(1).split("."):
                node = node[part]
            return str(node)

        return re.sub(r"\$\{([^}]+)\}", value, text)

    def paths(items) -> set[str]:
        return {render(next(iter(i)) if isinstance(i, dict) else i) for i in items or []}

    def str_(*items: Path) -> set[str]:
        return {Path(p).as_posix() for p in items}

    assert set(VARIANT_FILES) == set(VARIANTS)  # every form of the student has its file
    layout = Artifacts(params)
    outs = {name: paths(s.get("outs")) | paths(s.get("metrics")) | paths(s.get("plots")) for name, s in STAGES.items()}
    assert outs["sources"] == str_(*(layout.source_record(name) for name in SOURCE_RECORDS.values()))
    for stage, name in SOURCE_RECORDS.items():  # a stage reading outside files depends on their record
        assert str_(layout.source_record(name)) <= paths(STAGES[stage]["deps"]), stage
    assert outs["prepare"] == str_(layout.raw_dir, layout.prepared_dir)
    assert outs["validate"] == str_(layout.validation_docs, layout.validation_result)
    for stage in ("teacher", "distill"):
        model = layout.teacher if stage == "teacher" else layout.student()
        assert outs[stage] == str_(model, model.with_suffix(".json"), layout.training_metrics(stage))
    assert outs["prune"] == str_(layout.pruned_dir, layout.training_metrics("prune"))
    assert all(layout.student(v).parent == layout.pruned_dir for v in PRUNED_VARIANTS)
    assert layout.pruning_record.parent == layout.pruned_dir
    assert outs["compress"] == str_(
        *(layout.student(v).with_suffix(s) for v in ("onnx_fp32", "onnx_int8") for s in (".onnx", ".json"))
    )
    assert outs["evaluate"] == str_(
        layout.evaluation_report,
        layout.predictions,
        layout.evaluation_metrics,
        *(layout.confusion(m) for m in CONFUSION_MODELS),
    )
    assert outs["gate"] == str_(layout.gate_json, layout.gate_markdown, layout.gate_html)
    assert outs["package"] == str_(layout.package_json)
    top = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert paths(top["metrics"]) == str_(*(layout.training_metrics(s) / "metrics.json" for s in TRAINING_STAGES))
    assert paths(top["plots"]) == str_(*(layout.training_metrics(s) / "plots" / "metrics" for s in TRAINING_STAGES))


def test_tests_that_share_a_project_run_on_one_worker(request: pytest.FixtureRequest):
    """Under `--dist loadgroup`, xdist carries each test's group in its id; when it does not
    (pytest 9.2 with xdist 3.8, pytest-dev/pytest-xdist#1386), every worker builds every
    shared project again and the suite runs far longer without failing anywhere else."""
    if not request.config.getoption("loadgroup", default=False):
        pytest.skip("not distributed by group (-n 0)")
    grouped = [item for item in request.session.items if any(item.iter_markers("xdist_group"))]
    if not grouped:
        pytest.skip("no test of a shared project was selected")
    lost = [item.nodeid for item in grouped if "@" not in item.nodeid]
    assert not lost, f"xdist ignored the groups of {len(lost)} tests: install the pytest pyproject.toml pins"


def test_every_relative_link_in_the_readme_and_docs_resolves():
    """A moved or renamed page or file is caught here, not by a reader; anchors are not checked."""
    pages = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            path = target.split("#", 1)[0]
            if path and not re.match(r"[a-z]+:", path) and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == []
