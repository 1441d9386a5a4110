"""Drift monitoring end to end: real traffic through the served model, real inference logs,
real Evidently reports."""

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest

from vgg2resnet.artifacts import StoreLayout
from vgg2resnet.config import UserError, load_params
from vgg2resnet.monitoring.monitor import read_inference_log, run_monitor
from vgg2resnet.monitoring.traffic import CORRUPTIONS, corrupt, loopback_url, send_traffic
from vgg2resnet.packaging.store import read_reference

from .conftest import classify_files, promoted_tag
from .userdata import stored_images

pytestmark = pytest.mark.slow


@pytest.fixture
def params(served, monkeypatch):
    monkeypatch.chdir(served["project"])
    return load_params("params.yaml")


def test_the_reference_is_stored_with_the_promoted_version(served):
    """The version's reference profiles the val images, one row each in the manifest's order:
    their sizes, and the mean, spread and saturation of their pixels, computed here from the
    files with the ITU-R BT.601 luma weights and the HSV definition of saturation."""
    import bentoml
    import numpy as np
    from PIL import Image

    version = bentoml.models.get(served["tag"])
    reference = pd.read_parquet(Path(version.path) / StoreLayout.REFERENCE)
    project = served["project"]
    manifest = pd.read_parquet(project / "data/prepared/manifest.parquet")
    val = manifest[manifest["split"] == "val"]
    assert len(reference) == len(val) > 0
    categories = json.loads((project / "data/prepared/categories.json").read_text())
    stored = stored_images(project / "data/raw")
    for row, path in zip(reference.itertuples(), val["path"]):
        rgb = np.asarray(Image.open(io.BytesIO(stored[path])).convert("RGB"), dtype=np.float64)
        luma = rgb @ [0.299, 0.587, 0.114]
        top, bottom = rgb.max(axis=2), rgb.min(axis=2)
        saturation = np.where(top > 0, 255 * (top - bottom) / np.maximum(top, 1), 0)
        assert (row.width, row.height) == (rgb.shape[1], rgb.shape[0]), path
        assert row.brightness == pytest.approx(luma.mean(), abs=0.5), path  # Pillow rounds to whole levels
        assert row.contrast == pytest.approx(luma.std(), abs=0.5), path
        assert row.saturation == pytest.approx(saturation.mean(), abs=0.5), path
        assert row.prediction in categories and 0 < row.confidence <= 1
    assert {"sharpness", "emb_0"} <= set(reference)
    assert not (project / "models/reference.parquet").exists()


def test_a_promotion_profiles_a_seeded_sample_of_val_when_told_to(served, params):
    """monitoring.reference_images bounds the reference: its rows are the full reference's rows of
    the sampled images (image statistics, prediction, confidence; the embedding's PCA was fitted
    on a monitoring.projection_images sample of train, so its axes differ)."""
    import bentoml

    from vgg2resnet.artifacts import Artifacts
    from vgg2resnet.data.datasets import load_split, sample_rows
    from vgg2resnet.packaging import store

    full = bentoml.models.get(served["tag"])
    limit = 7
    sampled_params = params.model_copy(
        update={
            "serving": params.serving.model_copy(update={"model_name": "sampled-reference"}),
            "monitoring": params.monitoring.model_copy(update={"reference_images": limit, "projection_images": 16}),
        }
    )
    artifact = Artifacts(params).student(full.info.metadata["variant"])
    tag, saved = store.promote(sampled_params, artifact, full.info.metadata)
    sampled = read_reference(bentoml.models.get(tag))
    val = load_split(params.data.prepared_dir / "manifest.parquet", "val")
    chosen = val["path"].isin(sample_rows(val, limit, params.data.seed)["path"]).to_numpy()
    columns = [c for c in sampled.columns if not c.startswith("emb_")]
    assert saved and len(sampled) == limit < len(val)
    pd.testing.assert_frame_equal(
        sampled[columns],
        read_reference(full)[columns][chosen].reset_index(drop=True),
        check_exact=False,
        rtol=1e-4,
        atol=1e-4,
    )


def test_the_reference_holds_what_the_service_logs_for_the_same_images(served, params):
    """Reference and traffic are compared column by column, so they must be the same numbers for
    the same image: the val split sent over HTTP, as files, is logged as the reference profiled it."""
    import bentoml

    from vgg2resnet.data.datasets import load_split

    reference = read_reference(bentoml.models.get(served["tag"]))
    val = load_split(params.data.prepared_dir / "manifest.parquet", "val")
    since = datetime.now(UTC)
    classify_files(served["url"], params.data.raw_dir, val["path"])
    logged = read_inference_log(params.monitoring.log_dir, since=since).rows.reset_index(drop=True)
    assert len(logged) == len(reference) == len(val)
    columns = [c for c in reference.columns if c not in ("prediction",)]
    pd.testing.assert_frame_equal(
        logged[columns].astype(float), reference[columns].astype(float), check_exact=False, rtol=1e-4, atol=1e-4
    )
    assert logged["prediction"].tolist() == reference["prediction"].tolist()


def test_clean_traffic_shows_no_drift(served, params):
    """Traffic from the reference's own distribution, its val images served twice, must raise no
    alarm whatever the model. (Test-split traffic is not used here: against the tests' 20-row
    reference, a near-chance model's predictions and embeddings on 36 other images drift by
    chance alone; the demo's clean test traffic is benchmarks/drift_sensitivity.py's.)"""
    from vgg2resnet.data.datasets import load_split

    val = load_split(params.data.prepared_dir / "manifest.parquet", "val")
    since = datetime.now(UTC)
    classify_files(served["url"], params.data.raw_dir, [*val["path"], *val["path"]])
    summary = run_monitor(params, since=since)
    assert summary["status"] == "no_drift", summary
    assert summary["rows_compared"]["current"] == 2 * len(val) >= params.monitoring.min_rows
    assert Path(summary["report_html"]).is_file()
    assert json.loads(Path(summary["report_html"]).with_suffix(".json").read_text())["status"] == "no_drift"
    health = summary["teacher_agreement"]  # every image is kept in the tests (retain_fraction 1.0)
    assert health["sampled"] == 2 * len(val)  # its value: see the constant-prediction test below
    report = json.loads((served["project"] / "metrics/evaluate/report.json").read_text())
    variant = json.loads((served["project"] / "reports/gate.json").read_text())["variant"]
    assert health["test_split_agreement"] == report["candidates"][variant]["agreement"]


def test_strong_corruption_is_detected_and_named(served, params):
    since = datetime.now(UTC)
    send_traffic(params, served["url"], 40, corruption="brightness", severity=5)
    summary = run_monitor(params, since=since)
    assert summary["drift_detected"] and summary["status"] == "drift"
    assert "brightness" in summary["drifted_columns"]
    assert "embedding" in summary["drifted_columns"]
    trend = (params.monitoring.report_dir / "trend.html").read_text()
    assert f"monitoring.drift_share {params.monitoring.drift_share:g}" in trend  # the threshold line
    assert "brightness" in trend and "rows compared" in trend  # what drifted, and on how many rows


def test_too_few_rows_is_not_enough_data_not_an_alarm(served, params):
    summary = run_monitor(params, since=datetime.now(UTC))
    assert summary["status"] == "not_enough_data" and summary["drift_detected"] is False
    assert "min_rows" in summary["message"]


def test_a_corrupt_log_line_is_skipped_and_counted(served, params, tmp_path: Path):
    send_traffic(params, served["url"], 8)  # lines to copy, whichever tests ran before
    source = sorted(params.monitoring.log_dir.glob("*.log"))[0]
    copy = tmp_path / "data.1.log"
    lines = source.read_text().splitlines()
    copy.write_text("\n".join([*lines[:3], '{"logged_at": broken json', "plain garbage", *lines[3:6]]) + "\n")
    window = read_inference_log(tmp_path, since=datetime(2000, 1, 1, tzinfo=UTC))
    assert window.skipped_lines == 2 and len(window.rows) == 6


@pytest.mark.parametrize(
    "url",
    [
        "http://192.0.2.1:3000",
        "http://127.evil.example:3000",
        "http://0.0.0.0:3000",
        "http://[::ffff:192.0.2.1]:3000",
        "ftp://127.0.0.1:3000",
        "127.0.0.1:3000",
        "http://127.0.0.1:99999",
    ],
)
def test_simulated_traffic_refuses_hosts_that_are_not_loopback(params, url: str):
    with pytest.raises(UserError, match="this machine only"):
        send_traffic(params, url, 1)


@pytest.mark.parametrize(
    "url, sent_to",
    [
        ("http://localhost:3000/", {"http://127.0.0.1:3000", "http://[::1]:3000"}),
        ("http://127.0.0.2:3000", {"http://127.0.0.2:3000"}),
        ("http://[::1]:3000", {"http://[::1]:3000"}),
        ("http://2130706433:3000", {"http://127.0.0.1:3000"}),  # 127.0.0.1 as one number
    ],
)
def test_a_loopback_host_is_resolved_once_and_requests_go_to_its_address(url: str, sent_to: set[str]):
    assert loopback_url(url) in sent_to


def test_every_corruption_changes_the_image(served):
    import numpy as np
    from PIL import Image

    stored = stored_images(served["project"] / "data/raw")
    image = Image.open(io.BytesIO(next(b for p, b in stored.items() if p.startswith("three/")))).convert("RGB")
    for name in CORRUPTIONS:
        assert not np.array_equal(np.asarray(corrupt(image, name, 5)), np.asarray(image)), name


def test_traffic_is_judged_against_the_reference_of_the_version_that_served_it(
    promoted_project: Path, tmp_path: Path, monkeypatch
):
    """Two versions with different references, then a rollback: each window of logged traffic is
    compared with the reference stored with the version that served it."""
    import bentoml

    from vgg2resnet.packaging import store

    monkeypatch.chdir(promoted_project)
    loaded = load_params("params.yaml")
    params = loaded.model_copy(
        update={
            "monitoring": loaded.monitoring.model_copy(
                update={"log_dir": tmp_path / "logs", "report_dir": tmp_path / "drift"}
            )
        }
    )
    tag = promoted_tag(promoted_project)
    files = {
        p.name: p
        for p in Path(bentoml.models.get(tag).path).iterdir()
        if p.is_file() and not p.name.startswith("model.yaml")
    }
    reference = pd.read_parquet(files[StoreLayout.REFERENCE])
    reference.assign(brightness=reference["brightness"] - 100).to_parquet(tmp_path / StoreLayout.REFERENCE)
    plain = store.save_version("monitor-versions", files, {"model_sha256": "plain"})
    darker = store.save_version(
        "monitor-versions",
        {**files, StoreLayout.REFERENCE: tmp_path / StoreLayout.REFERENCE},
        {"model_sha256": "darker"},
    )
    restored = store.rollback("monitor-versions", plain)

    # The same traffic (the plain reference's own rows) served first by `darker`, then by `restored`.
    (tmp_path / "logs").mkdir()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for hour, served_by in ((0, darker), (1, restored)):
        stamp = start + timedelta(hours=hour)
        records = [
            {**row, "logged_at": stamp.isoformat(), "model_tag": served_by, "retained_image": ""}
            for row in reference.to_dict(orient="records")
        ]
        (tmp_path / "logs" / f"data.{hour}.log").write_text("".join(json.dumps(r) + "\n" for r in records))

    first = run_monitor(params, since=start, until=start + timedelta(hours=1))
    assert first["model_tag"] == darker and "brightness" in first["drifted_columns"]
    second = run_monitor(params, since=start + timedelta(hours=1))
    assert second["model_tag"] == restored and second["drifted_columns"] == []
    assert second["rows_compared"] == {"reference": len(reference), "current": len(reference)}


def test_teacher_agreement_with_each_constant_prediction_sums_to_100(served, params, monkeypatch):
    """The teacher names one category per kept image, so its agreement with "always c", summed
    over every category c, is 100 %: a fact that holds whatever the models learnt."""
    import functools

    from vgg2resnet.monitoring import health

    # One load of the 0.5 GB teacher for the ten calls below, not ten.
    monkeypatch.setattr(health, "load_model", functools.lru_cache(maxsize=1)(health.load_model))
    teacher_agreement = health.teacher_agreement
    since = datetime.now(UTC)
    send_traffic(params, served["url"], 16)  # the tests' service keeps every image (retain_fraction 1.0)
    kept = read_inference_log(params.monitoring.log_dir, since=since).rows
    assert len(kept) == 16 and kept["retained_image"].astype(bool).all()
    categories = json.loads((served["project"] / "data/prepared/categories.json").read_text())
    results = [teacher_agreement(kept.assign(prediction=category), params) for category in categories]
    assert all(r["sampled"] == 16 for r in results)
    assert sum(r["agreement"] for r in results) == pytest.approx(100.0)
    baseline = results[0]["test_split_agreement"]
    for result in results:
        assert result["agreement_upper_bound"] >= result["agreement"]
        assert result["alert"] == (baseline - result["agreement_upper_bound"] > params.monitoring.max_agreement_drop)
