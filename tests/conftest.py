"""Shared fixtures live in tests/fixtures/, one module per real component."""

pytest_plugins = [
    "tests.fixtures.triton",
    "tests.fixtures.gateway",
    "tests.fixtures.prometheus",
    "tests.fixtures.ray_cluster",
    "tests.fixtures.milvus",
]
