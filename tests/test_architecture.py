"""The package's shape: dependencies flow one way (import-linter contracts in pyproject.toml), modules stay small."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from server.core.config import REPO_ROOT

MAX_MODULE_LINES = 250


def test_import_contracts_are_kept():
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint_imports), "--no-logo", "--no-cache"], cwd=REPO_ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_server_module_is_too_long_to_read():
    long = {str(p.relative_to(REPO_ROOT)): n for p in (REPO_ROOT / "server").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"split these modules by stage: {long}"
