from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from vgg2resnet.config import Params, UserError, load_params
from vgg2resnet.lineage import params_hash

from .conftest import ROOT, repo_params


def _fields(model: type[BaseModel], prefix: str = ""):
    """(dotted key, field) of every setting, sections included."""
    for name, field in model.model_fields.items():
        yield prefix + name, field
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _fields(field.annotation, f"{prefix}{name}.")


def test_params_yaml_is_the_only_source_of_values():
    """No setting has a second value in code that could disagree with params.yaml."""
    with_defaults = [key for key, field in _fields(Params) if not field.is_required()]
    assert with_defaults == []
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    loaded = load_params(ROOT / "params.yaml").model_dump(mode="json")
    assert _yaml_leaves(raw) == _yaml_leaves(loaded)  # params.yaml sets every setting, and nothing else


def _yaml_leaves(tree: dict, prefix: str = "") -> set[str]:
    """Dotted keys of a parsed YAML tree's leaves (an empty mapping is a leaf: a setting's value)."""
    return {
        k
        for key, value in tree.items()
        for k in (_yaml_leaves(value, f"{prefix}{key}.") if isinstance(value, dict) and value else {prefix + key})
    }


def test_a_key_missing_from_params_yaml_is_named(tmp_path: Path):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    del raw["gate"]["min_teacher_margin"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError, match=r"missing key 'gate\.min_teacher_margin'"):
        load_params(path)


def test_the_params_hash_is_of_the_loaded_settings(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the hash must not read one
    base = repo_params()
    assert params_hash(base) == params_hash(repo_params())
    assert params_hash(base) != params_hash(repo_params({"gate": {"max_accuracy_drop": 3.0}}))


def test_unknown_key_names_the_key_and_the_allowed_ones(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("distill:\n  temprature: 4\n")
    with pytest.raises(UserError) as info:
        load_params(path)
    message = str(info.value)
    assert "distill.temprature" in message
    assert "temperature" in message  # the allowed keys are listed
    assert str(path) in message


def test_wrong_type_and_out_of_range_values_are_named(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("teacher:\n  epochs: many\ndistill:\n  alpha: 1.5\n")
    with pytest.raises(UserError) as info:
        load_params(path)
    assert "teacher.epochs" in str(info.value)
    assert "distill.alpha" in str(info.value)


def test_closed_choices_list_the_allowed_values(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("teacher:\n  optimizer: rmsprop\n")
    with pytest.raises(UserError, match=r"'sgd'.*'adamw'"):
        load_params(path)


def test_missing_file_and_bad_yaml(tmp_path: Path):
    with pytest.raises(UserError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(bad)


def test_split_must_leave_training_data():
    with pytest.raises(ValueError, match="val \\+ test"):
        repo_params({"data": {"split": {"val": 0.45, "test": 0.45}}})


@settings(max_examples=25)
@given(timeout_s=st.integers(1, 600), budget_ms=st.integers(1, 700_000))
def test_the_batching_budget_may_not_outlast_the_timeout(tmp_path_factory, timeout_s: int, budget_ms: int):
    """A budget beyond timeout_s could never shed a request, which would have answered 504 first."""
    serving = {"timeout_s": timeout_s, "max_latency_ms": budget_ms}
    if budget_ms <= timeout_s * 1000:
        assert repo_params({"serving": serving}).serving.max_latency_ms == budget_ms
    else:
        message = _load_with(tmp_path_factory, "serving", {**repo_params().serving.model_dump(), **serving})
        assert "'serving'" in message and "max_latency_ms" in message and "timeout_s * 1000" in message


def _leaves(model: type[BaseModel], prefix: str = ""):
    """(dotted key, field) of every leaf setting, from the settings schema itself."""
    for key, field in _fields(model, prefix):
        if not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            yield key, field


def _bounds(field) -> list[tuple[str, float]]:
    return [
        (kind, getattr(rule, kind))
        for rule in field.metadata
        for kind in ("ge", "gt", "le", "lt")
        if getattr(rule, kind, None) is not None
    ]


LEAVES = dict(_leaves(Params))
BOUNDED = {key: field for key, field in LEAVES.items() if _bounds(field)}


def _load_with(tmp_path_factory, key: str, value) -> str:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    *sections, name = key.split(".")
    node = raw
    for section in sections:
        node = node[section]
    node[name] = value
    path = tmp_path_factory.mktemp("params") / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(UserError) as info:
        load_params(path)
    assert str(path) in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("key", sorted(k for k, f in LEAVES.items() if "dict" not in str(f.annotation)))
@settings(max_examples=3)
@given(junk=st.dictionaries(st.text("abcxyz", min_size=1, max_size=5), st.integers(), min_size=1, max_size=3))
def test_a_value_of_the_wrong_type_anywhere_is_named_by_its_key(tmp_path_factory, key: str, junk: dict):
    assert f"'{key}'" in _load_with(tmp_path_factory, key, junk)


@pytest.mark.parametrize("key", sorted(BOUNDED))
@settings(max_examples=4)
@given(step=st.integers(1, 10**6), data=st.data())
def test_a_value_beyond_any_bound_is_named_by_its_key(tmp_path_factory, key: str, step: int, data):
    kind, limit = data.draw(st.sampled_from(_bounds(BOUNDED[key])))
    integral = "int" in str(BOUNDED[key].annotation) and "float" not in str(BOUNDED[key].annotation)
    beyond = step if integral else step / 1000
    value = {"ge": limit - beyond, "gt": limit, "le": limit + beyond, "lt": limit}[kind]
    assert f"'{key}'" in _load_with(tmp_path_factory, key, value)


def _coercible(key: str) -> list:
    """Wrong values that a lax parser would have turned into the setting's type: a number for a
    boolean, a boolean or a string for a number, a whole float for a count, an empty or numeric
    path, infinity and NaN where a finite number belongs."""
    annotation = str(LEAVES[key].annotation).removeprefix("<class '").removesuffix("'>")
    kind = annotation.removesuffix(" | None")
    if "Path" in annotation:
        return ["", "  ", 1]
    return {
        "bool": [1, 0, "true"],
        "int": [True, "3", 3.0],
        "float": [True, "0.5", float("inf"), float("nan")],
        "typing.Union[typing.Literal['auto'], int]": [True, "3", 3.0],
    }.get(kind, [])


COERCIBLE = {key: values for key in LEAVES if (values := _coercible(key))}


@pytest.mark.parametrize("key", sorted(COERCIBLE))
def test_a_value_of_another_type_is_refused_not_coerced(tmp_path_factory, key: str):
    for value in COERCIBLE[key]:
        assert f"'{key}'" in _load_with(tmp_path_factory, key, value), value


def test_every_kind_of_setting_is_tried_for_coercion():
    tried = {str(LEAVES[key].annotation) for key in COERCIBLE}
    assert {
        "<class 'bool'>",
        "<class 'int'>",
        "<class 'float'>",
        "<class 'pathlib.Path'>",
        "float | None",
        "int | None",
    } <= tried and len(COERCIBLE) > 80


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("orchestration.gpu_stages", ["tecaher"], "'teacher'"),
        ("data.source", "", "at least 1 character"),
        ("augment.std", [0.2, 0.0, 0.2], "greater than 0"),
        ("augment.mean", [0.5, 0.5], "at least 3 items"),
    ],
)
def test_names_and_lists_are_checked(tmp_path_factory, key: str, value, says: str):
    message = _load_with(tmp_path_factory, key, value)
    assert key in message and says in message


def test_a_bound_pair_in_the_wrong_order_is_refused(tmp_path_factory):
    message = _load_with(
        tmp_path_factory,
        "validation",
        {**repo_params().validation.model_dump(mode="json"), "min_side": 100, "max_side": 50},
    )
    assert "min_side (100) is above max_side (50)" in message


JSON_BOUNDS = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt"}


def _json_schema_bounds() -> dict[str, set]:
    """Every setting's bounds as pydantic writes them into the JSON schema (an optional one's
    inside its anyOf), keyed by dotted key: the schema read another way than _leaves reads it."""
    schema = Params.model_json_schema()

    def resolve(node: dict) -> dict:
        while "$ref" in node:
            node = schema["$defs"][node["$ref"].split("/")[-1]]
        return node

    def walk(node: dict, prefix: str = ""):
        for name, prop in resolve(node).get("properties", {}).items():
            if "properties" in resolve(prop):
                yield from walk(prop, f"{prefix}{name}.")
            else:
                parts = [resolve(prop), *map(resolve, prop.get("anyOf", []))]
                yield (
                    prefix + name,
                    {(JSON_BOUNDS[k], v) for part in parts for k, v in part.items() if k in JSON_BOUNDS},
                )

    return dict(walk(schema))


def test_the_schema_walk_sees_every_setting():
    """The walk the generated tests above run over, held to two other readings: the keys of
    params.yaml as YAML parses them, and the bounds in pydantic's own JSON schema."""
    assert set(LEAVES) == _yaml_leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
    bounds = _json_schema_bounds()
    assert set(bounds) == set(LEAVES)
    assert {key: set(_bounds(field)) for key, field in BOUNDED.items()} == {k: b for k, b in bounds.items() if b}


@pytest.mark.parametrize(("key", "least"), [("runtime.num_workers", 0), ("runtime.processes", 1)])
@settings(max_examples=5)
@given(value=st.one_of(st.integers(max_value=-1), st.text(min_size=1).filter(lambda t: t != "auto"), st.floats()))
def test_worker_and_process_counts_take_auto_or_a_count(tmp_path_factory, key: str, least: int, value):
    """A count below `least`, a word other than auto or a fraction is refused by name."""
    if isinstance(value, int):
        value += least
    message = _load_with(tmp_path_factory, key, value)
    assert f"'{key}'" in message and "auto" in message
