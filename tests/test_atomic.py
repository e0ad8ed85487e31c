"""Atomic output: the final name appears only on success, with the usual file mode."""

import os
import stat

import pytest

from soilcarbon.atomic import atomic_path
from soilcarbon.errors import SoilCarbonError


def test_success_renames_with_umask_mode(tmp_path):
    target = tmp_path / "out.csv"
    old = os.umask(0o022)
    try:
        with atomic_path(target) as tmp:
            assert tmp.parent == tmp_path and tmp != target
            tmp.write_text("a,b\n")
            assert not target.exists()
    finally:
        os.umask(old)
    assert target.read_text() == "a,b\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == ["out.csv"]


def test_failure_leaves_nothing_and_keeps_an_old_file(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.csv"]


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(SoilCarbonError, match="does not exist"):
        with atomic_path(tmp_path / "nope" / "out.csv"):
            pass
