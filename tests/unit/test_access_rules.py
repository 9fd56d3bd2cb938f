"""Access rules in-process: owner IDs that keep namespaces disjoint, the key set's rotation (an empty set refuses
every token, a corrupt file keeps the last good keys), catalogs whose owners would nest are not served."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from devkit.tokens import keygen, mint, retire
from server.api.auth import KeySet
from server.core.errors import InvalidInput, Unauthenticated
from server.core.ids import check_owner_id, owner_id_problem
from server.store.base import ImageRecord, Visibility
from server.store.faiss import FaissVectorStore
from server.store.metadata import SqliteMetadataStore


@pytest.mark.parametrize("owner", ["", "alice", "shop-17", "u42@example.org", "x" * 128])
def test_owner_ids_without_a_slash_are_owners(owner):
    assert owner_id_problem(owner) is None
    check_owner_id(owner)


@pytest.mark.parametrize("owner", ["alice/bob", "/", "a/", "x" * 129, "tab\there"])
def test_owner_ids_that_could_nest_or_break_are_refused(owner):
    assert owner_id_problem(owner) is not None
    with pytest.raises(InvalidInput, match="owner_id"):
        check_owner_id(owner)


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, KeySet]:
    keygen("k1", tmp_path / "k1.pem", tmp_path / "jwks.json")
    return tmp_path, KeySet(tmp_path / "jwks.json", issuer=None, audience="visual-search")


def _token(root: Path, kid: str = "k1", owners: list[str] = ()) -> str:
    return mint((root / f"{kid}.pem").read_bytes(), kid, "svc", ["write"], owners)


def _reread(key_set: KeySet) -> None:
    """What the gateway does every few seconds; a changed size or mtime is what it looks for."""
    time.sleep(0.01)
    key_set.reload()


def test_a_key_added_verifies_and_a_retired_one_does_not(keys):
    root, key_set = keys
    assert key_set.verify(_token(root, owners=["alice"])).owners == {"alice"}
    keygen("k2", root / "k2.pem", root / "jwks.json")
    _reread(key_set)
    assert key_set.verify(_token(root, "k2")).subject == "svc"
    retire("k2", root / "jwks.json")
    _reread(key_set)
    with pytest.raises(Unauthenticated, match="not a configured key"):
        key_set.verify(_token(root, "k2"))


def test_retiring_every_key_refuses_every_token(keys):
    root, key_set = keys
    token = _token(root)
    retire("k1", root / "jwks.json")
    _reread(key_set)
    with pytest.raises(Unauthenticated):
        key_set.verify(token)


def test_a_corrupt_key_file_keeps_the_last_good_keys(keys):
    root, key_set = keys
    for broken in ('{"keys": [', "[]", '{"keys": "k1"}', '{"keys": [{"kty": "nonsense", "kid": "x"}]}'):
        (root / "jwks.json").write_text(broken)
        _reread(key_set)
        assert key_set.verify(_token(root)).subject == "svc", broken


def test_a_token_naming_an_owner_that_cannot_exist_is_refused(keys):
    root, _ = keys
    with pytest.raises(ValueError, match="'/'"):
        _token(root, owners=["alice/bob"])


def test_a_catalog_with_nested_owners_is_not_served(tmp_path):
    """Written before owner IDs were checked: owner 'alice/bob' nests inside owner 'alice''s namespace."""
    records = SqliteMetadataStore(tmp_path / "catalog" / "metadata.sqlite")
    records.insert([ImageRecord("alice/bob/1", 0, "alice/bob", Visibility.PRIVATE, False, "h", "encoder/1", 0.0)])
    records.close()
    np.zeros((1, 8), np.float32).tofile(tmp_path / "catalog" / "vectors.f32")
    with pytest.raises(RuntimeError, match="alice/bob"):
        FaissVectorStore(tmp_path / "catalog", 8, "encoder/1")
