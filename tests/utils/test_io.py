"""The one atomic write: permissions, fsync'd rename, clean-up of what a failed or killed write leaves."""

from __future__ import annotations

import os
import stat

import pytest

from utils.io import TEMP_PREFIX, atomic_write, read_json, remove_stale_temporaries, write_json


def test_outputs_follow_the_umask_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(str(tmp_path / "a" / "r.json"), {"x": 1})
    finally:
        os.umask(old)
    mode = stat.S_IMODE(os.stat(tmp_path / "a" / "r.json").st_mode)
    assert mode == 0o644  # readable by colleagues on a shared cluster, as a plain open() would make it
    assert read_json(str(tmp_path / "a" / "r.json")) == {"x": 1}


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "r.json"
    write_json(str(path), {"old": True})
    with pytest.raises(RuntimeError):
        with atomic_write(str(path)) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("disk gone")
    assert read_json(str(path)) == {"old": True}
    assert os.listdir(tmp_path) == ["r.json"]


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    (tmp_path / f"{TEMP_PREFIX}abc.nii.gz").write_bytes(b"partial")
    (tmp_path / "keep.json").write_text("{}")
    assert remove_stale_temporaries(str(tmp_path)) == 1
    assert os.listdir(tmp_path) == ["keep.json"]
