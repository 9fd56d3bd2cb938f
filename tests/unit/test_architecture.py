"""The package's shape: dependencies flow one way (import-linter contracts in pyproject.toml), modules stay small."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from server.core.config import REPO_ROOT

MAX_MODULE_LINES = 250
PACKAGES = ("server", "clients", "benchmarks", "evaluation", "training", "jobs", "cli", "devkit", "reporting")


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


def test_every_module_imports():
    """Benchmarks, evaluation, training and jobs are not all exercised by tests: a stale import path after a
    refactor would only show when someone runs them. Import each one in a fresh interpreter."""
    names = sorted(".".join(p.relative_to(REPO_ROOT).with_suffix("").parts)
                   for top in PACKAGES
                   for p in (REPO_ROOT / top).rglob("*.py") if "_pb2" not in p.name and p.name != "__main__.py")
    script = ("import importlib, sys\n"
              "for name in sys.argv[1:]:\n    importlib.import_module(name.removesuffix('.__init__'))")
    result = subprocess.run([sys.executable, "-c", script, *names], cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
