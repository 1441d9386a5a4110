"""The BentoML service through a real `bentoml serve` on 127.0.0.1, spoken to over HTTP."""

import io
import json
import time
from pathlib import Path

import bentoml
import pandas as pd
import pytest
import requests
from PIL import Image

from vgg2resnet.artifacts import StoreLayout
from vgg2resnet.config import VARIANTS, load_params
from vgg2resnet.stages import gate, package

from .conftest import ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(served):
    return {**served, "workdir": served["project"]}


def _test_split(project: Path) -> pd.DataFrame:
    manifest = pd.read_parquet(project / "data/prepared/manifest.parquet")
    return manifest[manifest["split"] == "test"].sort_values("path").reset_index(drop=True)


def test_a_known_image_returns_a_category_with_top_k(server):
    image = next((server["project"] / "data/raw/three").iterdir())
    answer = requests.post(f"{server['url']}/classify", files={"image": image.open("rb")}, timeout=60)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    categories = json.loads((server["project"] / "data/prepared/categories.json").read_text())
    assert body["category"] in categories and body["model_tag"] == server["tag"]
    assert len(body["top_k"]) == 3 and body["top_k"][0]["category"] == body["category"]
    assert 0 < body["confidence"] <= 1


def test_openapi_documents_both_endpoints_as_file_uploads_answering_json(server):
    spec = requests.get(f"{server['url']}/docs.json", timeout=30).json()
    for endpoint, field in (("classify", "image"), ("classify_batch", "images")):
        post = spec["paths"][f"/{endpoint}"]["post"]
        assert field in post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
        assert list(post["responses"]["200"]["content"]) == ["application/json"]


def _served_categories(url: str, project: Path, test: pd.DataFrame) -> list[str]:
    served = []
    for start in range(0, len(test), 16):
        chunk = test.iloc[start:start + 16]
        files = [("images", (Path(p).name, (project / "data/raw" / p).read_bytes(), "image/png"))
                 for p in chunk["path"]]
        answer = requests.post(f"{url}/classify_batch", files=files, timeout=120)
        assert answer.status_code == 200, answer.text
        served += [item["category"] for item in answer.json()]
    return served


def _assert_http_equals_offline(url: str, project: Path, variant: str) -> None:
    """The serving smoke test: any preprocessing skew between evaluation and serving shows here."""
    test = _test_split(project)
    served = _served_categories(url, project, test)
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


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_serves_what_it_scored_offline(served, variant: str, tmp_path: Path, monkeypatch):
    """Promote one variant (under its own model name) through the real gate and serve it."""
    from vgg2resnet.serving.server import local_server

    project = served["project"]
    monkeypatch.chdir(project)
    params = load_params(project / "params.yaml")
    params = params.model_copy(update={
        "gate": params.gate.model_copy(update={"variants": [variant], "min_variant_agreement": 0.0}),
        "paths": params.paths.model_copy(update={"reports_dir": tmp_path / "reports"}),
        "serving": params.serving.model_copy(update={"model_name": f"smoke-{variant.replace('_', '-')}"}),
    })
    result = gate.run(params)
    assert result["variant"] == variant, result
    _, tag, _ = package.promote(params)
    model_file = Path(bentoml.models.get(tag).path)
    assert (model_file / StoreLayout.ONNX).is_file() == variant.startswith("onnx")
    with local_server(tag, cwd=tmp_path, project_root=ROOT,
                      params_file=project / "params.yaml") as url:
        _assert_http_equals_offline(url, project, variant)


def _png(size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, "white").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("case", ["not_an_image", "empty", "truncated", "decompression_bomb",
                                  "wrong_content_type", "too_many_files", "text_instead_of_file",
                                  "malformed_form", "unknown_field"])
def test_bad_input_gets_a_4xx_with_a_reason_and_the_server_keeps_serving(server, case):
    url = f"{server['url']}/classify"
    if case == "not_an_image":
        answer = requests.post(url, files={"image": ("notes.txt", b"hello", "text/plain")}, timeout=30)
    elif case == "empty":
        answer = requests.post(url, files={"image": ("empty.png", b"", "image/png")}, timeout=30)
    elif case == "truncated":
        answer = requests.post(url, files={"image": ("cut.png", _png()[:60], "image/png")}, timeout=30)
    elif case == "decompression_bomb":
        answer = requests.post(url, files={"image": ("huge.png", _png((8000, 8000)), "image/png")}, timeout=60)
    elif case == "wrong_content_type":
        answer = requests.post(url, json={"image": "cat.png"}, timeout=30)
    elif case == "text_instead_of_file":  # `curl -F image=digit.png`, the @ forgotten
        answer = requests.post(url, files={"image": (None, "digit.png")}, timeout=30)
    elif case == "malformed_form":
        answer = requests.post(url, data=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}, timeout=30)
    elif case == "unknown_field":
        answer = requests.post(url, files={"picture": ("ok.png", _png(), "image/png")}, timeout=30)
    else:
        files = [("images", (f"{i}.png", _png(), "image/png")) for i in range(33)]
        answer = requests.post(f"{server['url']}/classify_batch", files=files, timeout=60)
    assert 400 <= answer.status_code < 500, (answer.status_code, answer.text)
    text = answer.text
    assert "Traceback" not in text and "/site-packages/" not in text
    expected = {"not_an_image": "not a recognised image", "empty": "empty", "truncated": "truncated",
                "decompression_bomb": "limit is", "wrong_content_type": "image",
                "too_many_files": "at most 32", "text_instead_of_file": "not a file",
                "malformed_form": "not a valid form", "unknown_field": "unknown field 'picture'"}[case]
    assert expected in text
    good = requests.post(url, files={"image": ("ok.png", _png(), "image/png")}, timeout=60)
    assert good.status_code == 200


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
    for column in ("brightness", "contrast", "sharpness", "saturation", "width", "height", "emb_0", "emb_7",
                   "prediction", "confidence", "logged_at"):
        assert column in last.columns
    assert record["brightness"] == pytest.approx(255.0)
