"""The vsearch CLI end to end against real services."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from server.core.config import REPO_ROOT
from tests.photos import photo

VSEARCH = [sys.executable, "-m", "cli.main"]


def run(gateway, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*VSEARCH, "--gateway", gateway.target, "--data-dir", str(gateway.data_dir), *args],
                            capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_index_search_hide_search(fresh_gateway, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for image_id in ("skimage/coffee", "skimage/chelsea", "skimage/rocket", "desert"):
        shutil.copy(photo(image_id).path, folder / (image_id.replace("/", "_") + photo(image_id).path.suffix))
    out = run(fresh_gateway, "index", str(folder)).stdout
    assert "added: 4" in out
    assert "already_exists: 0, rejected: 0, skipped: 4" in run(fresh_gateway, "index", str(folder)).stdout  # resumable

    query = folder / "skimage_chelsea.png"
    gallery = tmp_path / "g.png"
    lines = run(fresh_gateway, "search", str(query), "-k", "3", "--gallery", str(gallery)).stdout.splitlines()
    assert lines[0].split()[-1] == "skimage_chelsea" and gallery.stat().st_size > 10_000
    assert "skimage_chelsea" in run(fresh_gateway, "search", str(query), "--crop", "0.2,0.1,0.8,0.9").stdout

    assert "updated 1" in run(fresh_gateway, "hide", "skimage_chelsea").stdout
    after = run(fresh_gateway, "search", str(query), "-k", "10").stdout
    assert "skimage_chelsea" not in after and "desert" in after
    assert "images: 4 (3 public, 1 private)" in run(fresh_gateway, "stats").stdout


@pytest.mark.parametrize(("args", "message"), [
    (["similar", "no-such-id"], "NOT_FOUND"),
    (["search", "/nonexistent.jpg"], "cannot read"),
    (["search", str(Path(__file__)), "--crop", "0,0,2,1"], "INVALID_ARGUMENT"),
])
def test_errors_print_one_line_and_exit_nonzero(fresh_gateway, args, message):
    result = run(fresh_gateway, *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
