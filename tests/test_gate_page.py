"""reports/gate.html: the page a reviewer opens. It must open offline, and its gallery must show
exactly the test images on which teacher and student disagree, each under who was right."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from vgg2resnet.gate.html import render_html

from .conftest import repo_params

CATEGORIES = ["cat", "dog", "fox"]
# (true, teacher, student) for six test images: two where only the teacher is right, one where
# only the student is, one where both are wrong but differ, and two agreements.
ANSWERS = {
    "a.png": (0, 0, 1),
    "b.png": (1, 1, 2),
    "c.png": (2, 0, 2),
    "d.png": (0, 1, 2),
    "e.png": (1, 1, 1),
    "f.png": (2, 0, 0),
}
GROUPS = {
    "student wrong, teacher right": {"a.png", "b.png"},
    "teacher wrong, student right": {"c.png"},
    "both wrong": {"d.png"},
}
EXTERNAL = re.compile(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", re.IGNORECASE)


def offline(page: str) -> bool:
    """No script, image, style or link the browser would fetch: every script is inline, and
    outside the scripts (plotly.js itself holds URLs in strings) nothing points elsewhere."""
    markup = re.sub(r"<script(?: type=\"text/javascript\")?>.*?</script>", "", page, flags=re.DOTALL)
    return "<script" not in markup and not EXTERNAL.search(markup) and "@import" not in markup


def _model(top1: float, size_mb: float, latency_ms: float, flops: float) -> dict:
    return {
        "top1": top1,
        "size_mb": size_mb,
        "flops": flops,
        "cpu": {"latency_ms_p50": latency_ms},
        "per_category": {c: top1 for c in CATEGORIES},
    }


def _page(tmp_path: Path, max_gallery_images: int) -> str:
    for i, name in enumerate(ANSWERS):
        Image.new("RGB", (40, 30), (40 * i, 0, 0)).save(tmp_path / name)
    predictions = pd.DataFrame(
        [
            {
                "path": name,
                "label": t,
                "category": CATEGORIES[t],
                "teacher": p,
                "teacher_confidence": 0.9,
                "onnx_int8": s,
                "onnx_int8_confidence": 0.6,
            }
            for name, (t, p, s) in ANSWERS.items()
        ]
    )
    report = {"teacher": _model(66.7, 528.0, 40.0, 3.1e9), "candidates": {"onnx_int8": _model(50.0, 24.0, 9.0, 1.3e8)}}
    result = {
        "decision": "promote",
        "variant": "onnx_int8",
        "summary": "promoting onnx_int8 <b>",
        "checks": [
            {"name": "accuracy_parity", "value": 1.0, "threshold": 2.0, "passed": True, "reason": "within 2 pt"}
        ],
        "lineage": {"git_revision": "abc"},
    }
    settings = repo_params({"report": {"max_gallery_images": max_gallery_images}}).report
    return render_html(result, report, predictions, CATEGORIES, lambda path: (tmp_path / path).read_bytes(), settings)


def _shown(page: str) -> dict[str, set[str]]:
    """The gallery's image paths under each group heading."""
    groups = re.split(r"<h3>", page)[1:]
    return {re.match(r"([^:<]+):", g).group(1): set(re.findall(r"data-path='([^']+)'", g)) for g in groups}


def test_the_gallery_shows_exactly_the_disagreements_under_who_was_right(tmp_path: Path):
    page = _page(tmp_path, max_gallery_images=60)
    assert _shown(page) == GROUPS
    figure = re.search(r"<figure data-path='c.png'>.*?</figure>", page).group(0)
    assert "true: <b>fox</b>" in figure and "teacher: cat (90%)" in figure and "student: fox (60%)" in figure
    assert figure.count("data:image/jpeg;base64,") == 1
    assert "promoting onnx_int8 &lt;b&gt;" in page  # text from the reports is escaped
    for heading in ("Per-category top-1", "Confusion matrices", "Size, latency and top-1", "Lineage", "Checks"):
        assert heading in page


def test_the_page_opens_offline_and_caps_the_gallery(tmp_path: Path):
    page = _page(tmp_path, max_gallery_images=3)
    assert offline(page)
    assert page.count("Plotly.newPlot(") >= 3  # the three charts, drawn by the embedded plotly.js
    shown = _shown(page)
    assert sum(len(paths) for paths in shown.values()) == 3
    assert shown["student wrong, teacher right"] == {"a.png", "b.png"}
    assert "disagree: 4 of 6" in page and "Showing the first 3" in page


@pytest.mark.slow
def test_the_pipelines_gate_page_lists_the_evaluations_disagreements(promoted_project: Path):
    gate = json.loads((promoted_project / "reports/gate.json").read_text())
    student = gate["variant"]
    predictions = pd.read_parquet(promoted_project / "metrics/evaluate/predictions.parquet")
    manifest = pd.read_parquet(promoted_project / "data/prepared/manifest.parquet")
    assert predictions["path"].tolist() == manifest.loc[manifest["split"] == "test", "path"].tolist()
    differ = predictions[predictions["teacher"] != predictions[student]]
    page = (promoted_project / "reports/gate.html").read_text()
    assert set(re.findall(r"data-path='([^']+)'", page)) == set(differ["path"])
    assert gate["disagreements"]["disagreements"] == len(differ)
    assert offline(page)
    assert (promoted_project / "reports/gate.html").stat().st_size < 6e6
