"""Promotion survives a crash: a process killed (SIGKILL) while BentoML copies a new version into
the model store, after every file and in the middle of every file, leaves the previous version
in production, the incomplete one reported and skipped, and the store usable."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vgg2resnet.artifacts import StoreLayout
from vgg2resnet.config import UserError
from vgg2resnet.packaging import store

# Saves a version in a process that kills itself, as `kill -9` would, while BentoML's copy into
# the store is at file number CRASH_AT: before it, or (CRASH_HALF) after half of its bytes.
CRASHING_SAVE = """
import os, shutil, signal, sys
from pathlib import Path
from vgg2resnet.packaging import store

crash_at, half = int(sys.argv[1]), sys.argv[2] == "half"
copytree, copied = shutil.copytree, 0

def copy(source, target):
    global copied
    if copied == crash_at:
        if half:
            data = Path(source).read_bytes()
            Path(target).write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    copied += 1
    return shutil.copy2(source, target)

shutil.copytree = lambda source, target, **options: copytree(source, target, copy_function=copy, **options)
store.save_version(sys.argv[3], {name: Path(path) for name, path in zip(sys.argv[4::2], sys.argv[5::2])},
                   {"model_sha256": "new"})
"""


def _files(folder: Path, label: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        StoreLayout.MODEL: folder / "model.pt",
        StoreLayout.META: folder / "model.json",
        StoreLayout.REFERENCE: folder / "reference.parquet",
    }
    for name, path in files.items():
        path.write_bytes(f"{label} {name} ".encode() * 1000)
    return files


@pytest.mark.parametrize("half", [False, True], ids=["between_files", "inside_a_file"])
@pytest.mark.parametrize("crash_at", range(4))  # three files and BentoML's model.yaml
def test_a_save_killed_at_any_point_leaves_the_previous_version_in_production(
    tmp_path: Path, crash_at: int, half: bool
):
    name = f"crash-{crash_at}-{int(half)}"
    previous = store.save_version(name, _files(tmp_path / "old", "old"), {"model_sha256": "old"})
    new = _files(tmp_path / "new", "new")
    arguments = [str(crash_at), "half" if half else "whole", name]
    arguments += [str(item) for pair in new.items() for item in pair]
    # BentoML stages a save in a temporary folder that the killed process never removes: in tmp_path.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    killed = subprocess.run(
        [sys.executable, "-c", CRASHING_SAVE, *arguments],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert killed.returncode == -9, killed.stderr

    whole, broken = store.inventory(name)
    assert [str(m.tag) for m in whole] == [previous] and len(broken) == 1 and "incomplete" in broken[0]
    assert str(store.current(name).tag) == previous
    # The store stays usable: a new save and a rollback work, and each gives a complete version.
    again = store.save_version(name, new, {"model_sha256": "new"})
    assert str(store.current(name).tag) == again
    restored = store.rollback(name)
    assert restored == str(store.current(name).tag)
    assert Path(store.current(name).path_of(StoreLayout.MODEL)).read_bytes() == (tmp_path / "old/model.pt").read_bytes()
    incomplete = f"{name}:{Path(broken[0].split(':')[0]).name}"
    with pytest.raises(UserError, match="not a complete promoted version"):
        store.rollback(name, incomplete)


def test_a_file_changed_after_saving_makes_its_version_incomplete(tmp_path: Path):
    name = "tampered"
    first = store.save_version(name, _files(tmp_path / "a", "a"), {"model_sha256": "a"})
    second = store.save_version(name, _files(tmp_path / "b", "b"), {"model_sha256": "b"})
    model = Path(store.current(name).path_of(StoreLayout.MODEL))
    assert str(store.current(name).tag) == second
    os.truncate(model, model.stat().st_size - 1)
    assert str(store.current(name).tag) == first
    assert "model.pt does not match" in store.inventory(name)[1][0]
