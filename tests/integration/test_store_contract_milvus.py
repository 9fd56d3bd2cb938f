"""The store contract of tests/unit/test_store_contract.py and the region contract of
tests/unit/test_region_contract.py, every test of them, against the real Milvus server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from server.store.milvus import MilvusIndexConfig, MilvusVectorStore
from tests.unit.test_region_contract import *  # noqa: F403 - the region contract's tests, collected here too
from tests.unit.test_region_contract import DIM as REGION_DIM
from tests.unit.test_region_contract import R
from tests.unit.test_store_contract import *  # noqa: F403 - the contract's tests, collected here too
from tests.unit.test_store_contract import DIM, VERSION, OpenStore, opener

pytestmark = pytest.mark.slow
# as on CPU clusters with compact codes: PQ distances, candidates re-scored from the rows' vectors
INDEX = MilvusIndexConfig(kind="IVF_PQ", nlist=64, nprobe=8)


def milvus_backend(request: pytest.FixtureRequest, dim: int = DIM) -> OpenStore:
    """The real Milvus server (one per test session), collections of this test's own."""
    server = request.getfixturevalue("milvus_server")
    prefix = f"contract_{uuid.uuid4().hex[:10]}"
    return lambda regions=0: MilvusVectorStore(server.uri, VERSION, dim, index=INDEX, collection_prefix=prefix,
                                               regions=regions)


@pytest.fixture
def open_store(request: pytest.FixtureRequest) -> Iterator[OpenStore]:
    yield from opener(milvus_backend(request))


@pytest.fixture
def open_region_store(request: pytest.FixtureRequest) -> Iterator[OpenStore]:
    backend = milvus_backend(request, REGION_DIM)
    yield from opener(lambda regions=R: backend(regions))
