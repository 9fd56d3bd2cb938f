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
