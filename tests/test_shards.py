"""data/raw's shards over generated histories of runs: what each run lists can be read back, byte
for byte, by the loaders and by `tar`; a shard never changes once written; a run writes only
content no kept shard holds; removed content never takes more than half the bytes."""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vgg2resnet.data.shards import INDEX, Packer, StoredImages

from .userdata import stored_images

CONTENTS = 12  # distinct contents; paths share them, so identical files occur


def _content(number: int) -> bytes:
    """Bytes of a length that crosses tar's 512-byte blocks in every way."""
    return np.random.default_rng(number).integers(0, 256, 1 + 97 * number, dtype=np.uint8).tobytes()


def _rows(listed: set[int]) -> pd.DataFrame:
    """Path i (in one of three categories, one with a long non-ASCII name) holds content i % CONTENTS."""
    paths = [f"{('cat', 'dog', 'ü' * 120)[i % 3]}/{i:03d}.jpg" for i in sorted(listed)]
    payloads = [_content(i % CONTENTS) for i in sorted(listed)]
    return pd.DataFrame(
        {
            "path": paths,
            "sha256": [hashlib.sha256(p).hexdigest() for p in payloads],
            "bytes": [len(p) for p in payloads],
            "payload": payloads,
        }
    )


def _pack(rows: pd.DataFrame, into: Path, shard_bytes: int, old: Path | None) -> pd.DataFrame:
    into.mkdir()
    packer = Packer(into, shard_bytes, old)
    stored = packer.stored()
    for row in rows.itertuples():
        if row.sha256 not in stored:
            packer.add(row.path, row.payload, row.sha256)
    return rows.join(packer.finish(rows.drop(columns="payload")))


def _inodes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in folder.glob("*.tar")}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    runs=st.lists(st.sets(st.integers(0, 35), max_size=30), min_size=1, max_size=4),
    shard_bytes=st.sampled_from([1000, 4000, 1 << 20]),
)
def test_every_run_reads_back_what_it_lists_and_writes_only_new_content(
    tmp_path_factory, runs: list[set[int]], shard_bytes: int
):
    work = tmp_path_factory.mktemp("shards")
    old = None
    for number, listed in enumerate(runs):
        rows = _pack(_rows(listed), work / f"run{number}", shard_bytes, old)
        raw = work / f"run{number}"
        images = StoredImages(raw, rows)
        assert [images.read(i) for i in range(len(rows))] == list(rows["payload"])
        assert stored_images(raw) == dict(zip(rows["path"], rows["payload"]))  # what `tar xf` gives back
        index = pd.read_parquet(raw / INDEX)
        assert list(index["path"]) == sorted(rows["path"])
        members = {}
        for shard in raw.glob("*.tar"):
            assert shard.name == f"{hashlib.sha256(shard.read_bytes()).hexdigest()[:16]}.tar"  # named by content
            with tarfile.open(shard) as tar:
                members[shard.name] = sum(member.size for member in tar.getmembers())
        live = rows.drop_duplicates("sha256")["bytes"].sum()
        assert sum(members.values()) <= 2 * live  # removed content: at most half of what is kept
        if old is not None:
            before, after = _inodes(old), _inodes(raw)
            kept = before.keys() & after.keys()
            assert all(before[name] == after[name] for name in kept)  # linked, never rewritten
            held = set(pd.read_parquet(old / INDEX).query("shard in @kept")["sha256"])
            new_content = rows[~rows["sha256"].isin(held)].drop_duplicates("sha256")["bytes"].sum()
            assert sum(members[name] for name in after.keys() - kept) == new_content
        old = raw

    again = _pack(_rows(runs[-1]), work / "again", shard_bytes, old)  # nothing changed: nothing written
    assert _inodes(work / "again") == _inodes(old)
    assert (work / "again" / INDEX).read_bytes() == (old / INDEX).read_bytes()
    assert again[["shard", "offset"]].equals(rows[["shard", "offset"]])


def test_the_same_images_in_the_same_order_make_the_same_shards(tmp_path: Path):
    rows = _rows(set(range(30)))
    _pack(rows, tmp_path / "one", 4000, None)
    _pack(rows, tmp_path / "two", 4000, None)
    one, two = sorted((tmp_path / "one").iterdir()), sorted((tmp_path / "two").iterdir())
    assert [p.name for p in one] == [p.name for p in two] and len(one) > 2
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two))


def test_a_missing_shard_is_not_counted_as_holding_its_images(tmp_path: Path):
    rows = _rows(set(range(30)))
    _pack(rows, tmp_path / "one", 4000, None)
    lost = next((tmp_path / "one").glob("*.tar"))
    held = set(pd.read_parquet(tmp_path / "one" / INDEX).query("shard == @lost.name")["sha256"])
    lost.unlink()
    (tmp_path / "two").mkdir()
    assert not held & Packer(tmp_path / "two", 4000, tmp_path / "one").stored()
