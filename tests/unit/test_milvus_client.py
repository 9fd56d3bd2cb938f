"""The Milvus client module's import-time duties (no server needed)."""

from __future__ import annotations

import subprocess
import sys

from server.core.config import REPO_ROOT


def test_pymilvus_scipy_check_runs_at_import_not_in_the_first_concurrent_searches():
    """pymilvus' own scipy.sparse check is not thread-safe (it executes a fresh copy of the module outside the
    import lock): importing the store's client must have run it, so no search thread ever does."""
    script = ("from pymilvus.client.utils import SciPyHelper\n"
              "assert not SciPyHelper._checked\n"
              "import server.store.milvus.client\n"
              "print(SciPyHelper._checked)")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == "True", result.stderr[-2000:]
