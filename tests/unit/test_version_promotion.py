"""The promotion record: which encoder version a new data directory starts on (server/model_versions/registry.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.core.config import Settings
from server.model_versions.registry import (
    PROMOTION_FILE,
    default_version,
    promoted,
    record_promotion,
    withdraw_promotion,
)


def repository(root: Path, published: tuple[str, ...]) -> Path:
    for version in published:
        (root / "encoder" / version).mkdir(parents=True)
        (root / "encoder" / version / "model.onnx").write_bytes(b"graph")
    return root


def test_without_a_record_new_data_directories_start_on_version_1(tmp_path: Path) -> None:
    repo = repository(tmp_path, ("1", "2"))
    assert promoted(repo) is None
    assert default_version(Settings(model_repository=repo)) == "1"


def test_a_promotion_is_what_new_data_directories_serve_unless_settings_name_one(tmp_path: Path) -> None:
    repo = repository(tmp_path, ("1", "2", "3"))
    record_promotion("3", "promote: better", repo)
    assert promoted(repo) == "3"
    assert json.loads((repo / "encoder" / PROMOTION_FILE).read_text())["reason"] == "promote: better"
    assert default_version(Settings(model_repository=repo)) == "3"
    assert default_version(Settings(model_repository=repo, model_version="2")) == "2"
    record_promotion("2", "promote: again", repo)
    assert default_version(Settings(model_repository=repo)) == "2"


def test_only_a_published_version_can_be_promoted(tmp_path: Path) -> None:
    repo = repository(tmp_path, ("1",))
    with pytest.raises(ValueError, match="no published version 2"):
        record_promotion("2", "promote", repo)
    assert promoted(repo) is None


def test_a_record_naming_a_missing_model_fails_loudly(tmp_path: Path) -> None:
    """A deleted or half-built version must not silently become "serve version 1"."""
    repo = repository(tmp_path, ("1", "2"))
    record_promotion("2", "promote", repo)
    (repo / "encoder" / "2" / "model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"names version 2.*make robust-encoder"):
        default_version(Settings(model_repository=repo))


def test_a_refused_rebuild_withdraws_its_own_promotion_only(tmp_path: Path) -> None:
    repo = repository(tmp_path, ("1", "2", "3"))
    record_promotion("2", "promote", repo)
    assert not withdraw_promotion("3", repo)
    assert promoted(repo) == "2"
    assert withdraw_promotion("2", repo)
    assert promoted(repo) is None and not withdraw_promotion("2", repo)
