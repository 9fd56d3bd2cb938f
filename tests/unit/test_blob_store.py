"""The blob store of originals: content-addressed, atomic on local disks, any fsspec URL."""

from __future__ import annotations

import hashlib

from server.store.blobs import BlobStore


def test_local_blobs_are_content_addressed_and_shared(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    data = b"\xff\xd8 not really a jpeg"
    digest = hashlib.sha256(data).hexdigest()
    store.put_many([(digest, data), (digest, data)])
    assert store.get(digest) == data
    assert (tmp_path / "blobs" / digest[:2] / digest).read_bytes() == data
    assert not [p for p in (tmp_path / "blobs").rglob("*") if p.name.startswith(".")], "no temp files left"
    assert BlobStore(f"file://{tmp_path / 'blobs'}").get(digest) == data


def test_blobs_by_url_on_another_filesystem():
    store = BlobStore("memory://vsearch-test/blobs")
    store.put("ab" + "0" * 62, b"bytes")
    assert not store.local and store.get("ab" + "0" * 62) == b"bytes"


def test_reading_many_returns_each_present_blob_whole_and_leaves_out_the_missing(tmp_path):
    """The local path reads with plain system calls (announced to the kernel first): a blob larger than one read
    comes back whole, an empty one empty, a missing one not at all; the same as through fsspec."""
    blobs = {hashlib.sha256(d).hexdigest(): d for d in (bytes(range(256)) * 3000, b"", b"small")}
    missing = "ee" * 32
    for root in (tmp_path / "local", "memory://vsearch-test/many"):
        store = BlobStore(root)
        store.put_many(list(blobs.items()))
        assert store.get_present([*blobs, missing, *blobs]) == blobs
