"""DVC end to end: repro, status, push to a local remote, pull into a fresh clone."""

from pathlib import Path

from .conftest import run, write_params
from .userdata import stored_images


def test_repro_status_push_pull_roundtrip(project: Path, tmp_path: Path):
    write_params(project, {"data": {"demo_image_size": 16}})
    run(["dvc", "repro", "prepare"], project)
    assert (project / "data" / "prepared" / "manifest.parquet").is_file()
    status = run(["dvc", "status", "prepare"], project)
    assert "up to date" in status.stdout.lower() or status.stdout.strip() == ""
    version = run(["vgg2resnet", "data-version"], project).stdout.strip()
    assert version.endswith(".dir")
    assert version in (project / "dvc.lock").read_text()

    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "data"], project)
    run(["dvc", "push", "prepare"], project)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    run(["dvc", "pull", "prepare"], clone)
    assert any(path.startswith("zero/") for path in stored_images(clone / "data" / "raw"))
    assert run(["vgg2resnet", "data-version"], clone).stdout.strip() == version
    assert "changed" not in run(["dvc", "status", "prepare"], clone).stdout.lower()
