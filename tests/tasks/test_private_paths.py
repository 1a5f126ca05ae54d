"""Shared temp paths another local user could plant in: the alias folder is the user's own."""

from __future__ import annotations

import os
import stat

import pytest

from contrail import storage
from contrail.errors import StorageError


@pytest.fixture
def aliases_parent(tmp_path, monkeypatch):
    monkeypatch.setattr(storage, "ALIASES_PARENT", tmp_path)
    return tmp_path


def _alias_folder(parent):
    return parent / f"contrail-aliases-{os.getuid()}"


def test_the_alias_folder_is_created_private(aliases_parent, tmp_path):
    folder = storage._alias_dir(tmp_path / "scratch")
    assert folder == _alias_folder(aliases_parent)
    assert stat.S_IMODE(os.lstat(folder).st_mode) == 0o700


def test_a_planted_link_is_refused_and_never_followed(aliases_parent, tmp_path):
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, _alias_folder(aliases_parent))
    with pytest.raises(StorageError, match=r"expected a folder owned by this user .* found a link"):
        storage._alias_dir(tmp_path / "scratch")
    assert list(elsewhere.iterdir()) == []


def test_a_folder_open_to_others_is_refused(aliases_parent, tmp_path):
    folder = _alias_folder(aliases_parent)
    folder.mkdir()
    os.chmod(folder, 0o1777)
    with pytest.raises(StorageError, match=r"with mode 0700, found a folder owned by uid \d+ with mode 1777"):
        storage._alias_dir(tmp_path / "scratch")


def test_a_stable_alias_names_the_copy_under_the_private_folder(aliases_parent, tmp_path, s3):
    with storage.Workspace(f"s3://{s3.new_bucket()}/root", tmp_path / "scratch") as workspace:
        target = workspace.root / "p" / "runs" / "r" / "preprocess"
        target.mkdir(parents=True)
        alias = workspace.stable_alias(target, "p-preprocess-0123")
        assert alias.parent == _alias_folder(aliases_parent) and os.readlink(alias) == str(target)
    assert not alias.exists()  # removed with the copy
