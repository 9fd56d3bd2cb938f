"""Repository hygiene: the committed gRPC stubs are what the proto generates, and ruff is clean."""

from __future__ import annotations

import shutil
import subprocess
import sys

from server.core.config import REPO_ROOT


def test_committed_proto_stubs_match_the_proto(tmp_path):
    shutil.copytree(REPO_ROOT / "protos", tmp_path / "protos", ignore=shutil.ignore_patterns("*_pb2*", "__pycache__"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I.", "--python_out=.", "--pyi_out=.",
                    "--grpc_python_out=.", "protos/visual_search/v1/visual_search.proto"], cwd=tmp_path, check=True)
    for name in ("visual_search_pb2.py", "visual_search_pb2.pyi", "visual_search_pb2_grpc.py"):
        fresh = (tmp_path / "protos/visual_search/v1" / name).read_text()
        assert fresh == (REPO_ROOT / "protos/visual_search/v1" / name).read_text(), f"{name} is stale: make proto"


def test_ruff_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO_ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout
