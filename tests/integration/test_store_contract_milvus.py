"""The store contract of tests/unit/test_store_contract.py, every test of it, against the real Milvus server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from server.store.milvus import MilvusIndexConfig, MilvusVectorStore
from tests.unit.test_store_contract import *  # noqa: F403 - the contract's tests, collected here too
from tests.unit.test_store_contract import DIM, VERSION, OpenStore, opener

pytestmark = pytest.mark.slow


def milvus_backend(request: pytest.FixtureRequest) -> OpenStore:
    """The real Milvus server (one per test session), a collection of this test's own, IVF_PQ as on CPU clusters."""
    server = request.getfixturevalue("milvus_server")
    prefix = f"contract_{uuid.uuid4().hex[:10]}"
    index = MilvusIndexConfig(kind="IVF_PQ", nlist=64, nprobe=8)
    return lambda: MilvusVectorStore(server.uri, VERSION, DIM, index=index, collection_prefix=prefix)


@pytest.fixture
def open_store(request: pytest.FixtureRequest) -> Iterator[OpenStore]:
    yield from opener(milvus_backend(request))
