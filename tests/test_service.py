"""The BentoML service through a real `bentoml serve` on 127.0.0.1, spoken to over HTTP: known
answers first, then generated inputs (every byte offset, hypothesis, schemathesis), each of
which must get a 200 with a prediction per image or a 4xx in the error shape that the
service's own OpenAPI document declares: never a 5xx, never a dropped connection."""

import json
import random
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import bentoml
import jsonschema
import numpy as np
import pandas as pd
import pytest
import requests
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from vgg2resnet.artifacts import StoreLayout
from vgg2resnet.config import VARIANTS, UserError, load_params
from vgg2resnet.data.manifest import image_facts
from vgg2resnet.data.policy import InputPolicy
from vgg2resnet.monitoring.traffic import send_traffic
from vgg2resnet.packaging import store
from vgg2resnet.serving.auth import service_token
from vgg2resnet.serving.limits import FRAMING_BYTES, RequestLimits, model_input_size
from vgg2resnet.serving.server import local_server
from vgg2resnet.stages import gate, package

from .conftest import ROOT, classify_files, merge
from .imagefiles import (
    FILE_TYPES,
    encoded,
    in_mode,
    noise,
    policy_cases,
    shortest_decodable,
    sideways_photo,
)
from .userdata import IMAGE_SIZE, stored_images

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(served):
    return {**served, "workdir": served["project"]}


def _test_split(project: Path) -> pd.DataFrame:
    manifest = pd.read_parquet(project / "data/prepared/manifest.parquet")
    return manifest[manifest["split"] == "test"].sort_values("path").reset_index(drop=True)


def test_a_test_image_gets_the_offline_prediction_with_a_ranked_top_k(server):
    project = server["project"]
    row = _test_split(project).iloc[0]
    answer = requests.post(
        f"{server['url']}/classify", files={"image": stored_images(project / "data/raw")[row["path"]]}, timeout=60
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    categories = json.loads((project / "data/prepared/categories.json").read_text())
    variant = json.loads((project / "reports/gate.json").read_text())["variant"]
    offline = pd.read_parquet(project / "metrics/evaluate/predictions.parquet")
    assert body["category"] == categories[offline[variant].iloc[0]] and body["model_tag"] == server["tag"]
    probabilities = [ranked["probability"] for ranked in body["top_k"]]
    assert len(body["top_k"]) == 3 and body["top_k"][0]["category"] == body["category"]
    assert probabilities == sorted(probabilities, reverse=True) and body["confidence"] == probabilities[0]
    assert len({ranked["category"] for ranked in body["top_k"]}) == 3 and sum(probabilities) <= 1 + 1e-6


def test_the_openapi_document_is_valid_as_it_is_served(spec):
    """Checked against the specification's own JSON schema (schemathesis's copy), as served; the
    validator does reject a document that breaks the specification."""
    import copy

    import schemathesis

    schemathesis.openapi.from_dict(spec).validate()
    broken = copy.deepcopy(spec)
    broken["info"] = "not an Info object"
    with pytest.raises(Exception, match="info"):
        schemathesis.openapi.from_dict(broken).validate()


def test_openapi_documents_both_endpoints_as_file_uploads_answering_json(server, spec):
    """Requests built from what /docs.json documents get what it documents: each POST endpoint's
    form fields, filled with real images as their schemas say (a file, or an array of files),
    answer 200 with JSON valid against the documented schema, one prediction per image; a field
    the form does not list answers the documented 400."""

    def resolve(schema: dict) -> dict:
        while "$ref" in schema:
            schema = spec["components"]["schemas"][schema["$ref"].split("/")[-1]]
        return schema

    posts = {path: item["post"] for path, item in spec["paths"].items() if "post" in item}
    assert set(posts) == {"/classify", "/classify_batch"}
    for path, post in posts.items():
        assert list(post["requestBody"]["content"]) == ["multipart/form-data"]
        form = resolve(post["requestBody"]["content"]["multipart/form-data"]["schema"])
        files, images = [], 0
        for field in form.get("required") or list(form["properties"]):
            schema = resolve(form["properties"][field])
            many = schema.get("type") == "array"
            item = resolve(schema["items"]) if many else schema
            assert item.get("format") == "binary", (path, field)  # a file
            count = 2 if many else 1
            files += [(field, (f"{field}-{i}.png", _png(), "image/png")) for i in range(count)]
            images += count
        answer = requests.post(f"{server['url']}{path}", files=files, timeout=60)
        assert answer.status_code == 200, answer.text
        declared = post["responses"]["200"]["content"]
        assert answer.headers["content-type"].split(";")[0] in declared
        body = answer.json()
        jsonschema.validate(body, _schema(spec, declared["application/json"]["schema"]))
        assert len(body if isinstance(body, list) else [body]) == images
        assert form["additionalProperties"] is False, path  # the form lists every field it takes
        extra = requests.post(f"{server['url']}{path}", files=[*files, ("undocumented", ("x.png", _png()))], timeout=60)
        assert extra.status_code == 400 and "400" in post["responses"], extra.text
        check_answer(extra, spec)


def _assert_http_equals_offline(url: str, project: Path, variant: str) -> None:
    """The serving smoke test: any preprocessing skew between evaluation and serving shows here."""
    test = _test_split(project)
    served = [answer["category"] for answer in classify_files(url, project / "data/raw", test["path"])]
    offline = pd.read_parquet(project / "metrics/evaluate/predictions.parquet")
    categories = json.loads((project / "data/prepared/categories.json").read_text())
    offline_categories = [categories[i] for i in offline[variant]]
    http_accuracy = 100 * (pd.Series(served) == test["category"]).mean()
    offline_accuracy = 100 * (pd.Series(offline_categories) == offline["category"]).mean()
    assert abs(http_accuracy - offline_accuracy) <= 0.5
    assert served == offline_categories


def test_accuracy_through_http_equals_the_offline_evaluation(server):
    variant = json.loads((server["project"] / "reports/gate.json").read_text())["variant"]
    _assert_http_equals_offline(server["url"], server["project"], variant)


def _promote(project: Path, variant: str, name: str, reports_dir: Path) -> str:
    """Promote one variant under its own model name through the real gate and package; its tag."""
    params = load_params(project / "params.yaml")
    params = params.model_copy(
        update={
            "gate": params.gate.model_copy(update={"variants": [variant], "min_variant_agreement": 0.0}),
            "paths": params.paths.model_copy(update={"reports_dir": reports_dir}),
            "serving": params.serving.model_copy(update={"model_name": name}),
        }
    )
    result = gate.run(params)
    assert result["variant"] == variant, result
    _, tag, _ = package.promote(params)
    return tag


def _logged(log_dir: Path, rows: int) -> pd.DataFrame:
    """The inference log's rows once `rows` of them are there (the monitor writes asynchronously)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        files = sorted(log_dir.glob("*.log"))
        if sum(len(f.read_text().splitlines()) for f in files) >= rows:
            break
        time.sleep(0.5)
    return pd.concat(
        [pd.read_json(f, lines=True, dtype={"request_id": str, "trace_id": str}) for f in sorted(log_dir.glob("*.log"))]
    )


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_serves_what_it_scored_offline_and_logs_its_drift_embedding(
    served, variant: str, tmp_path: Path, monkeypatch
):
    """Every form, the pruned ones included, whose pooled features are narrower than the
    ResNet-50's 2,048: the embedding is projected from the form's own features."""
    import torch

    project = served["project"]
    monkeypatch.chdir(project)
    params = load_params(project / "params.yaml")
    tag = _promote(project, variant, f"smoke-{variant.replace('_', '-')}", tmp_path / "reports")
    model_file = Path(bentoml.models.get(tag).path)
    assert (model_file / StoreLayout.ONNX).is_file() == (variant != "pytorch_fp32")
    width = (
        json.loads((project / "models/pruned/prune.json").read_text())["features"]
        if variant.startswith("pruned")
        else 2048
    )
    components = torch.load(model_file / StoreLayout.PROJECTION, weights_only=True)["components"]
    assert components.shape == (params.serving.embedding_dims, width)
    with local_server(tag, cwd=tmp_path, project_root=ROOT, params_file=project / "params.yaml") as url:
        _assert_http_equals_offline(url, project, variant)
        logged = _logged(tmp_path / params.monitoring.log_dir, len(_test_split(project)))
    assert len(logged) == len(_test_split(project)) and set(logged["model_tag"]) == {tag}
    embedding = logged[[f"emb_{i}" for i in range(params.serving.embedding_dims)]].to_numpy()
    assert np.isfinite(embedding).all() and embedding.std(axis=0).min() > 0


def test_a_rollback_serves_the_earlier_model_and_the_monitor_judges_its_traffic(served, tmp_path: Path, monkeypatch):
    """Promote A, then B, roll back, serve `name:latest` as a user would: the answers are A's
    offline predictions, and the monitor judges the traffic against A's reference."""
    from vgg2resnet.monitoring.monitor import run_monitor

    project, name = served["project"], "rollback-end-to-end"
    monkeypatch.chdir(project)
    tag_a = _promote(project, "pytorch_fp32", name, tmp_path / "a")
    tag_b = _promote(project, "onnx_int8", name, tmp_path / "b")
    assert str(store.current(name).tag) == tag_b
    restored = store.rollback(name)
    assert bentoml.models.get(restored).info.metadata["restored_from"] == tag_a
    a_files, restored_files = (Path(bentoml.models.get(tag).path) for tag in (tag_a, restored))
    assert (restored_files / StoreLayout.MODEL).read_bytes() == (a_files / StoreLayout.MODEL).read_bytes()
    assert not (restored_files / StoreLayout.ONNX).exists()  # not B's int8 model
    with local_server(f"{name}:latest", cwd=tmp_path, project_root=ROOT, params_file=project / "params.yaml") as url:
        answer = requests.post(f"{url}/classify", files={"image": ("ok.png", _png(), "image/png")}, timeout=60)
        assert answer.json()["model_tag"] == restored
        _assert_http_equals_offline(url, project, "pytorch_fp32")
    params = load_params(project / "params.yaml")
    params = params.model_copy(
        update={
            "serving": params.serving.model_copy(update={"model_name": name}),
            "monitoring": params.monitoring.model_copy(
                update={
                    "log_dir": tmp_path / "monitoring/vgg2resnet_classifier/data",
                    "report_dir": tmp_path / "drift",
                    "retained_dir": tmp_path / "monitoring/retained",
                }
            ),
        }
    )
    summary = run_monitor(params, since=datetime.now(UTC) - timedelta(hours=1))
    assert summary["model_tag"] == restored and summary["status"] != "not_enough_data"
    pd.testing.assert_frame_equal(
        store.read_reference(bentoml.models.get(restored)), store.read_reference(bentoml.models.get(tag_a))
    )


def _png(size=(32, 32)) -> bytes:
    return encoded(Image.new("RGB", size, "white"), "PNG")


@pytest.fixture(scope="module")
def spec(server) -> dict:
    return requests.get(f"{server['url']}/docs.json", timeout=30).json()


def _as_json_schema(node):
    """OpenAPI 3.0's `nullable: true` as JSON Schema spells it (jsonschema ignores the keyword)."""
    if isinstance(node, list):
        return [_as_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _as_json_schema(value) for key, value in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [node, {"type": "null"}]}
    return node


def _schema(spec: dict, schema: dict) -> dict:
    """A schema from the OpenAPI document as JSON Schema, its references resolvable."""
    return _as_json_schema({**schema, "components": spec["components"]})


def _error_schema(spec: dict) -> dict:
    return _schema(spec, {"$ref": "#/components/schemas/ErrorBody"})


def check_answer(answer: requests.Response, spec: dict, images: int | None = None) -> None:
    """What every request must get: a 200 with one valid prediction per image, or a 4xx whose
    body is the error shape the service's OpenAPI document declares for every error."""
    assert answer.status_code < 500, (answer.status_code, answer.text)
    body = answer.json()
    if answer.status_code == 200:
        predictions = body if isinstance(body, list) else [body]
        assert images is None or len(predictions) == images
        declared = spec["paths"]["/classify"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
        for prediction in predictions:
            jsonschema.validate(prediction, _schema(spec, declared))
            assert 0 <= prediction["confidence"] <= 1
            assert prediction["top_k"][0]["category"] == prediction["category"]
        return
    assert 400 <= answer.status_code < 500 and answer.headers["content-type"] == "application/json"
    jsonschema.validate(body, _error_schema(spec))
    assert "Traceback" not in answer.text and "/site-packages/" not in answer.text


def _still_serving(url: str) -> None:
    good = requests.post(f"{url}/classify", files={"image": ("ok.png", _png(), "image/png")}, timeout=60)
    assert good.status_code == 200, good.text


@pytest.mark.parametrize(
    "case",
    [
        "not_an_image",
        "empty",
        "truncated",
        "decompression_bomb",
        "gif",
        "wrong_content_type",
        "too_many_files",
        "text_instead_of_file",
        "malformed_form",
        "unknown_field",
        "no_body",
    ],
)
def test_bad_input_gets_a_400_saying_what_was_wrong_and_the_server_keeps_serving(server, spec, case):
    url = f"{server['url']}/classify"
    if case == "not_an_image":
        answer = requests.post(url, files={"image": ("notes.txt", b"hello", "text/plain")}, timeout=30)
    elif case == "empty":
        answer = requests.post(url, files={"image": ("empty.png", b"", "image/png")}, timeout=30)
    elif case == "truncated":
        answer = requests.post(url, files={"image": ("cut.png", _png()[:60], "image/png")}, timeout=30)
    elif case == "decompression_bomb":
        answer = requests.post(url, files={"image": ("huge.png", _png((8000, 8000)), "image/png")}, timeout=60)
    elif case == "gif":
        answer = requests.post(url, files={"image": ("cat.png", encoded(noise(), "GIF"), "image/png")}, timeout=30)
    elif case == "wrong_content_type":
        answer = requests.post(url, json={"image": "cat.png"}, timeout=30)
    elif case == "text_instead_of_file":  # `curl -F image=digit.png`, the @ forgotten
        answer = requests.post(url, files={"image": (None, "digit.png")}, timeout=30)
    elif case == "malformed_form":
        answer = requests.post(url, data=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}, timeout=30)
    elif case == "unknown_field":
        answer = requests.post(url, files={"picture": ("ok.png", _png(), "image/png")}, timeout=30)
    elif case == "no_body":
        answer = requests.post(url, timeout=30)
    else:
        files = [("images", (f"{i}.png", _png(), "image/png")) for i in range(33)]
        answer = requests.post(f"{server['url']}/classify_batch", files=files, timeout=60)
    assert answer.status_code == 400, (answer.status_code, answer.text)
    check_answer(answer, spec)
    expected = {
        "not_an_image": "not a PNG, JPEG, WebP or BMP image",
        "empty": "empty",
        "truncated": "truncated",
        "decompression_bomb": "over serving.max_image_area",
        "gif": "not a PNG, JPEG, WebP or BMP image",
        "wrong_content_type": "not multipart/form-data",
        "too_many_files": "at most 32",
        "text_instead_of_file": "not a file",
        "malformed_form": "not a valid form",
        "unknown_field": "unknown field",
        "no_body": "not multipart/form-data",
    }[case]
    body = answer.json()
    assert expected in body["error"] and any(expected in p["reason"] for p in body["problems"])
    if case in ("not_an_image", "empty", "truncated", "decompression_bomb", "gif"):
        assert body["problems"][0]["field"] == "image" and body["problems"][0]["filename"] in body["error"]
    _still_serving(server["url"])


def test_two_files_sent_to_the_one_file_endpoint_are_refused_not_half_classified(server, spec):
    files = [("image", ("a.png", _png(), "image/png")), ("image", ("b.png", _png(), "image/png"))]
    answer = requests.post(f"{server['url']}/classify", files=files, timeout=30)
    assert answer.status_code == 400 and "2 files sent" in answer.json()["error"]
    check_answer(answer, spec)


def test_routing_errors_and_the_openapi_document_share_one_error_shape(server, spec):
    answers = [
        requests.get(f"{server['url']}/no-such-endpoint", timeout=30),
        requests.get(f"{server['url']}/classify", timeout=30),
        requests.delete(f"{server['url']}/classify_batch", timeout=30),
    ]
    assert [a.status_code for a in answers] == [404, 405, 405]
    for answer in answers:
        check_answer(answer, spec)
    assert "POST" in answers[1].json()["error"]
    schemas = spec["components"]["schemas"]
    assert set(schemas["ErrorBody"]["properties"]) == {"error", "problems"}
    assert set(schemas["Problem"]["properties"]) == {"field", "index", "filename", "reason"}
    for path in ("/classify", "/classify_batch"):
        responses = spec["paths"][path]["post"]["responses"]
        assert {"400", "429", "500", "503", "504", "default"} <= set(responses)
        assert "401" not in responses and "security" not in spec["paths"][path]["post"]  # no token set
        for code, response in responses.items():
            if code != "200":
                assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}


def test_a_batch_with_bad_files_names_each_by_index_and_filename_and_classifies_nothing(server, spec):
    jpeg = encoded(noise(), "JPEG")
    files = [
        ("images", ("good-0.png", _png(), "image/png")),
        ("images", ("cut.jpg", jpeg[:300], "image/jpeg")),
        ("images", ("good-2.png", _png(), "image/png")),
        ("images", ("notes.txt", b"hello", "text/plain")),
    ]
    answer = requests.post(f"{server['url']}/classify_batch", files=files, timeout=60)
    assert answer.status_code == 400
    check_answer(answer, spec)
    problems = answer.json()["problems"]
    assert [(p["field"], p["index"], p["filename"]) for p in problems] == [
        ("images", 1, "cut.jpg"),
        ("images", 3, "notes.txt"),
    ]


@pytest.mark.parametrize("fmt", list(FILE_TYPES))
def test_a_file_cut_at_every_byte_offset_is_refused_until_every_pixel_is_in(server, spec, fmt: str):
    data = encoded(noise(), fmt)
    extension, mime = FILE_TYPES[fmt]
    end = shortest_decodable(fmt, data)
    with requests.Session() as session:
        for offset in range(len(data) + 1):
            name = f"cut-{offset}.{extension}"
            answer = session.post(f"{server['url']}/classify", files={"image": (name, data[:offset], mime)}, timeout=30)
            check_answer(answer, spec, 1)
            assert answer.status_code == (400 if offset < end else 200), (offset, answer.text)
            if offset < end:
                assert answer.json()["problems"][0]["filename"] == name
    _still_serving(server["url"])


def _file_strategy():
    """A whole image in one of the formats, or one cut at some offset."""
    return st.tuples(st.sampled_from(list(FILE_TYPES)), st.none() | st.integers(0, 10**6))


@settings(max_examples=60)
@given(files=st.lists(_file_strategy(), min_size=1, max_size=8))
def test_a_generated_batch_is_classified_whole_or_refused_naming_every_cut_file(server, spec, files):
    sample = {fmt: encoded(noise(seed=1), fmt) for fmt in FILE_TYPES}
    upload, must_fail = [], set()
    for index, (fmt, cut) in enumerate(files):
        data = sample[fmt] if cut is None else sample[fmt][: cut % len(sample[fmt])]
        if len(data) < shortest_decodable(fmt, sample[fmt]):  # every other one decodes
            must_fail.add(index)
        upload.append(("images", (f"{index}.{FILE_TYPES[fmt][0]}", data, FILE_TYPES[fmt][1])))
    answer = requests.post(f"{server['url']}/classify_batch", files=upload, timeout=60)
    check_answer(answer, spec, len(files))
    assert answer.status_code == (400 if must_fail else 200), answer.text
    if must_fail:
        problems = answer.json()["problems"]
        assert {p["index"] for p in problems} == must_fail
        assert all(p["filename"] == upload[p["index"]][1][0] for p in problems)


@settings(max_examples=150)
@given(
    fmt=st.sampled_from(list(FILE_TYPES)),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_flipped_bytes_get_a_prediction_or_a_400(server, spec, fmt: str, flips):
    data = bytearray(encoded(noise(), fmt))
    for position, value in flips:
        data[position % len(data)] = value
    answer = requests.post(f"{server['url']}/classify", files={"image": ("flipped", bytes(data))}, timeout=30)
    check_answer(answer, spec, 1)


HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24).map(str.strip)
PART = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["image", "images"]) | st.text(max_size=8),
        "filename": st.none() | st.text(max_size=16),
        "type": st.none() | st.sampled_from(["image/png", "image/jpeg", "text/plain"]) | HEADER_TEXT,
        "content": st.binary(max_size=64) | st.sampled_from([_png(), encoded(noise(), "JPEG")]),
    }
)


@st.composite
def multipart_requests(draw) -> tuple[bytes, dict[str, str]]:
    """A multipart body of random parts, well or badly framed, with random headers."""
    boundary = draw(st.text(st.sampled_from("abcXYZ019-_'+"), min_size=1, max_size=20))
    body = b""
    for part in draw(st.lists(PART, max_size=5)):
        disposition = f'form-data; name="{part["name"]}"'
        if part["filename"] is not None:
            disposition += f'; filename="{part["filename"]}"'
        head = "\r\n".join(
            [f"Content-Disposition: {disposition}", *([f"Content-Type: {part['type']}"] if part["type"] else [])]
        )
        body += f"--{boundary}\r\n{head}\r\n\r\n".encode() + part["content"] + b"\r\n"
    if draw(st.booleans()):
        body += f"--{boundary}--\r\n".encode()
    content_type = draw(
        st.sampled_from(
            [
                f"multipart/form-data; boundary={boundary}",
                "multipart/form-data",
                "multipart/mixed; boundary=x",
                "application/x-www-form-urlencoded",
                "application/json",
                "text/plain",
                "",
            ]
        )
        | HEADER_TEXT
    )
    headers = {"Content-Type": content_type} if content_type else {}
    headers.update(
        draw(
            st.dictionaries(
                st.sampled_from(["Accept", "Content-Encoding", "Expect", "X-Request-Id", "Authorization"]),
                HEADER_TEXT,
                max_size=3,
            )
        )
    )
    if draw(st.booleans()):
        body = draw(st.binary(max_size=200))  # not framed at all
    return body, headers


@settings(max_examples=200)
@given(request=multipart_requests(), endpoint=st.sampled_from(["classify", "classify_batch"]))
def test_random_multipart_bodies_and_headers_never_get_a_5xx(server, spec, request, endpoint):
    body, headers = request
    answer = requests.post(f"{server['url']}/{endpoint}", data=body, headers=headers, timeout=30)
    check_answer(answer, spec)


def test_schemathesis_finds_no_failure_with_all_checks(server, tmp_path: Path):
    _schemathesis(server["url"], tmp_path)


def _schemathesis(url: str, workdir: Path, *options: str) -> None:
    """schemathesis against the live server, from its own /docs.json; bounded and seeded for CI."""
    st_cli = Path(sys.executable).with_name("st")
    result = subprocess.run(
        [
            str(st_cli),
            "--config-file",
            str(ROOT / "tests" / "schemathesis.toml"),
            "run",
            f"{url}/docs.json",
            "--checks",
            "all",
            "--max-examples",
            "100",
            "--seed",
            "1",
            "--workers",
            "1",
            *options,
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


@settings(max_examples=80, deadline=None)
@given(case=policy_cases())
def test_an_upload_is_classified_only_when_the_input_policy_of_training_admits_it(server, spec, case):
    """The service refuses what validation refuses (tests/test_validate.py holds validation to the
    same policy), naming each rule broken, and converts the rest as training does."""
    mode, width, height = case
    payload = in_mode(mode, width, height)
    facts = image_facts(payload, 10**8)  # what prepare would record of this file
    policy = InputPolicy.of(load_params(server["project"] / "params.yaml").validation)
    refusals = policy.refusals(facts.width, facts.height, facts.mode)
    answer = requests.post(f"{server['url']}/classify", files={"image": ("case", payload)}, timeout=60)
    check_answer(answer, spec, images=1)
    if refusals:
        assert answer.status_code == 400 and all(reason in answer.json()["error"] for reason in refusals)
    else:
        assert answer.status_code == 200, answer.text


def _limits(server) -> RequestLimits:
    """The limits the server derives from the model it serves (its store metadata)."""
    serving = load_params(server["project"] / "params.yaml").serving
    metadata = bentoml.models.get(server["tag"]).info.metadata
    return RequestLimits.of(serving, model_input_size(metadata))


def test_the_limits_are_multiples_of_the_input_the_model_was_trained_at(server):
    limits, serving = _limits(server), load_params(server["project"] / "params.yaml").serving
    assert limits.image_pixels == serving.max_image_area * IMAGE_SIZE**2
    assert limits.request_pixels == serving.max_request_area * IMAGE_SIZE**2
    assert limits.request_bytes == serving.max_bytes_per_pixel * limits.request_pixels + FRAMING_BYTES


def test_an_image_over_its_pixel_limit_is_refused_from_its_header_naming_the_file(server, spec):
    limits = _limits(server)
    side = int(limits.image_pixels**0.5) + 1
    small, large = encoded(Image.new("L", (16, 16)), "PNG"), encoded(Image.new("L", (side, side)), "PNG")
    files = [("images", ("small.png", small, "image/png")), ("images", ("large.png", large, "image/png"))]
    answer = requests.post(f"{server['url']}/classify_batch", files=files, timeout=60)
    check_answer(answer, spec)
    assert answer.status_code == 400
    [problem] = answer.json()["problems"]
    assert (problem["index"], problem["filename"]) == (1, "large.png")
    assert "serving.max_image_area" in problem["reason"] and f"{side * side:,} px" in problem["reason"]
    edge = encoded(Image.new("L", (int(limits.image_pixels**0.5),) * 2), "PNG")
    assert requests.post(f"{server['url']}/classify", files={"image": ("edge.png", edge)}, timeout=60).ok


def test_a_request_over_the_pixel_budget_is_refused_from_the_headers(server, spec):
    limits = _limits(server)
    side = int(limits.image_pixels**0.5)  # each image within its own limit, the request not
    count = limits.request_pixels // side**2 + 1
    blank = encoded(Image.new("L", (side, side)), "PNG")
    files = [("images", (f"{i}.png", blank, "image/png")) for i in range(count)]
    answer = requests.post(f"{server['url']}/classify_batch", files=files, timeout=60)
    check_answer(answer, spec)
    assert answer.status_code == 400 and "serving.max_request_area" in answer.json()["error"]
    assert f"{count * side * side:,} px" in answer.json()["error"]
    accepted = requests.post(f"{server['url']}/classify_batch", files=files[1:], timeout=60)
    assert accepted.status_code == 200, accepted.text


def test_a_body_over_the_byte_limit_is_refused_with_a_413_whether_its_length_is_declared_or_not(server, spec):
    limit = _limits(server).request_bytes
    boundary = "x" * 16
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    body = head + _png() + b"\0" * (limit - len(head))  # over the limit by the PNG's size
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}

    def chunks():
        for start in range(0, len(body), 1 << 20):
            yield body[start : start + (1 << 20)]

    for data in (body, chunks()):  # Content-Length, then chunked transfer encoding
        answer = requests.post(f"{server['url']}/classify", data=data, headers=headers, timeout=120)
        check_answer(answer, spec)
        assert answer.status_code == 413 and "serving.max_bytes_per_pixel" in answer.json()["error"]
    ok = requests.post(f"{server['url']}/classify", files={"image": ("ok.png", _png())}, timeout=60)
    assert ok.status_code == 200


def test_64_clients_mixing_good_and_bad_uploads_get_no_5xx_and_no_good_request_fails(server):
    good, batch = _png(), [("images", (f"{i}.png", _png(), "image/png")) for i in range(4)]
    bad = [b"", b"not an image", encoded(noise(), "JPEG")[:200], _png()[:60], encoded(noise(), "GIF")]
    deadline = time.monotonic() + 4

    def client(seed: int) -> list[tuple[str, int]]:
        rng, seen = random.Random(seed), []
        with requests.Session() as session:
            while time.monotonic() < deadline:
                kind = rng.choice(["good", "good_batch", "bad", "bad_batch"])
                if kind == "good":
                    files = {"image": ("ok.png", good, "image/png")}
                elif kind == "good_batch":
                    files = batch
                elif kind == "bad":
                    files = {"image": ("bad.png", rng.choice(bad), "image/png")}
                else:
                    files = [*batch, ("images", ("bad.png", rng.choice(bad), "image/png"))]
                endpoint = "classify" if kind in ("good", "bad") else "classify_batch"
                answer = session.post(f"{server['url']}/{endpoint}", files=files, timeout=120)
                seen.append((kind, answer.status_code))
        return seen

    with ThreadPoolExecutor(64) as pool:
        seen = [pair for client_seen in pool.map(client, range(64)) for pair in client_seen]
    assert len(seen) >= 64
    assert [pair for pair in seen if pair[1] >= 500] == []
    assert {status for kind, status in seen if kind.startswith("good")} == {200}
    assert {status for kind, status in seen if kind.startswith("bad")} == {400}


def test_an_exif_rotated_jpeg_gets_the_prediction_of_its_upright_twin(server):
    """A phone photo stored sideways (EXIF orientation 6), and the upright picture it shows."""
    rotated, stored, shown = sideways_photo()
    upright, sideways = encoded(Image.fromarray(shown), "PNG"), encoded(Image.fromarray(stored), "PNG")
    answers = [
        requests.post(f"{server['url']}/classify", files={"image": (name, data)}, timeout=60).json()
        for name, data in (("rotated.jpg", rotated), ("upright.png", upright), ("sideways.png", sideways))
    ]
    assert answers[0] == answers[1]
    assert answers[0]["top_k"] != answers[2]["top_k"]  # the orientation matters to the model


def _serve_with(served: dict, workdir: Path, serving: dict, host: str = "127.0.0.1"):
    """The session's model served with other serving settings."""
    workdir.mkdir(parents=True, exist_ok=True)
    settings_file = workdir / "params.yaml"
    settings_file.write_text(
        yaml.safe_dump(merge(yaml.safe_load((served["project"] / "params.yaml").read_text()), {"serving": serving}))
    )
    return settings_file, local_server(
        served["tag"], cwd=workdir, project_root=ROOT, params_file=settings_file, host=host
    )


def test_a_version_whose_files_changed_since_it_was_saved_is_never_served(served, tmp_path: Path):
    promoted = bentoml.models.get(served["tag"])
    files = {p.name: p for p in Path(promoted.path).iterdir() if p.is_file() and p.name != "model.yaml"}
    tag = store.save_version("damaged-copy", files, dict(promoted.info.metadata), promoted=False)
    model = StoreLayout.model_in(Path(bentoml.models.get(tag).path))
    model.write_bytes(model.read_bytes()[:-1])  # as a copy cut short by a crash
    with (
        pytest.raises(RuntimeError, match=rf"{tag} is incomplete \({model.name} does not match"),
        local_server(tag, cwd=tmp_path, project_root=ROOT, params_file=served["project"] / "params.yaml"),
    ):
        pass


def test_without_a_token_the_service_starts_only_on_a_loopback_address(served, tmp_path: Path):
    _, open_to_all = _serve_with(served, tmp_path / "open", {}, host="0.0.0.0")
    with (
        pytest.raises(RuntimeError, match=r"listen on 0\.0\.0\.0 without a token(.|\n)*serving\.auth_token_env"),
        open_to_all,
    ):
        pass
    _, behind_a_gateway = _serve_with(
        served, tmp_path / "gateway", {"allow_network_without_token": True}, host="0.0.0.0"
    )
    with behind_a_gateway as url:
        _still_serving(url)


def test_load_shedding_answers_in_the_error_shape(served, tmp_path: Path):
    """Limits a burst must exceed: 2 requests in flight, a 1 ms batching budget, a 1 s timeout."""
    _, server = _serve_with(served, tmp_path, {"max_concurrency": 2, "max_latency_ms": 1, "timeout_s": 1})
    files = [("images", (f"{i}.png", encoded(noise(32, 32, seed=i), "PNG"), "image/png")) for i in range(32)]
    with server as url, ThreadPoolExecutor(24) as pool:
        spec = requests.get(f"{url}/docs.json", timeout=30).json()
        answers = list(pool.map(lambda _: requests.post(f"{url}/classify_batch", files=files, timeout=60), range(48)))
    statuses = [answer.status_code for answer in answers]
    assert set(statuses) <= {200, 429, 503, 504} and 429 in statuses, statuses
    for answer in answers:
        if answer.status_code != 200:
            jsonschema.validate(answer.json(), _error_schema(spec))
            assert answer.json()["error"]


TOKEN_ENV = "VGG2RESNET_TEST_TOKEN"


@pytest.fixture(scope="module")
def secured(served, tmp_path_factory):
    """The same model served with serving.auth_token_env set and its variable exported."""
    token = secrets.token_urlsafe(24)
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv(TOKEN_ENV, token)
        settings_file, server = _serve_with(served, tmp_path_factory.mktemp("secured"), {"auth_token_env": TOKEN_ENV})
        with server as url:
            yield {"url": url, "token": token, "params_file": settings_file}


def test_with_a_token_set_only_the_right_one_is_served_and_health_stays_open(secured):
    spec = requests.get(f"{secured['url']}/docs.json", timeout=30).json()
    image = {"image": ("ok.png", _png(), "image/png")}
    for endpoint, files in (("classify", image), ("classify_batch", {"images": image["image"]})):
        answers = [
            requests.post(f"{secured['url']}/{endpoint}", files=files, headers=headers, timeout=60)
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": secured["token"]},
                {"Authorization": f"Bearer {secured['token']}"},
                {"Authorization": f"bearer {secured['token']}"},
            )
        ]  # the scheme is case-blind
        assert [a.status_code for a in answers] == [401, 401, 401, 200, 200], [a.text for a in answers]
        for answer in answers[:3]:
            check_answer(answer, spec)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert answer.json()["problems"][0]["field"] == "Authorization"
            assert secured["token"] not in answer.text
    for path in ("/livez", "/readyz", "/metrics", "/docs.json", "/"):
        assert requests.get(f"{secured['url']}{path}", timeout=30).status_code == 200
    # Everything else is closed, an unknown path or a HEAD included: nothing tells what exists.
    for answer in (
        requests.get(f"{secured['url']}/no-such-endpoint", timeout=30),
        requests.head(f"{secured['url']}/classify", timeout=30),
    ):
        assert answer.status_code == 401 and answer.headers["content-type"] == "application/json"
    post = spec["paths"]["/classify"]["post"]
    assert post["security"] == [{"bearer": []}] and "401" in post["responses"]
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert "security" not in spec["paths"]["/livez"]["get"]


def test_schemathesis_with_the_token_finds_no_failure(secured, tmp_path: Path):
    _schemathesis(secured["url"], tmp_path, "--header", f"Authorization: Bearer {secured['token']}")


def test_simulated_traffic_sends_the_token_and_says_when_it_is_missing(secured, served, monkeypatch):
    monkeypatch.chdir(served["project"])
    params = load_params(secured["params_file"])
    monkeypatch.setenv(TOKEN_ENV, secured["token"])
    assert send_traffic(params, secured["url"], 8)["failed"] == 0
    monkeypatch.setenv(TOKEN_ENV, "wrong")
    with pytest.raises(UserError, match="answered 401: Authorization: the bearer token is not valid"):
        send_traffic(params, secured["url"], 8)
    monkeypatch.delenv(TOKEN_ENV)
    with pytest.raises(UserError, match=f"serving.auth_token_env names \\${TOKEN_ENV}, which is not set"):
        service_token(params.serving)
    unsecured = load_params(served["project"] / "params.yaml")
    with pytest.raises(UserError, match="answered 401"):
        send_traffic(unsecured, secured["url"], 8)


def test_every_prediction_is_logged_with_its_drift_features(server):
    log_dir = server["workdir"] / "monitoring" / "vgg2resnet_classifier" / "data"

    def rows() -> int:
        return sum(len(f.read_text().splitlines()) for f in log_dir.glob("*.log")) if log_dir.exists() else 0

    before = rows()
    files = [("images", (f"{i}.png", _png(), "image/png")) for i in range(3)]
    assert requests.post(f"{server['url']}/classify_batch", files=files, timeout=60).status_code == 200
    deadline = time.monotonic() + 20
    while rows() < before + 3 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert rows() == before + 3
    last = pd.read_json(sorted(log_dir.glob("*.log"))[-1], lines=True, dtype={"request_id": str, "trace_id": str})
    record = last.iloc[-1]
    assert record["model_tag"] == server["tag"]
    for column in (
        "brightness",
        "contrast",
        "sharpness",
        "saturation",
        "width",
        "height",
        "emb_0",
        "emb_7",
        "prediction",
        "confidence",
        "logged_at",
    ):
        assert column in last.columns
    assert record["brightness"] == pytest.approx(255.0)
