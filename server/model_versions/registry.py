"""Encoder model versions in the Triton repository: list them, publish a checkpoint as the next one, reload.

A version is a numbered directory holding the same ONNX contract (uint8 pixels in, unit embeddings out) and
the same Python-backend `model.py`. Publishing writes into a staging directory and renames it into place,
so Triton never sees a half-written version. On GPU hosts, build the version's TensorRT plan afterwards
with deploy/gpu/build_trt_plan.py.

The promotion gate (evaluation/gate.py --promote) records the version it promoted in `<model>/promoted.json`;
a new data directory starts on that version unless the settings name one (`default_version`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from server.core.config import MODEL_REPOSITORY, REPO_ROOT, Settings
from server.core.durable import write_atomic
from server.embedding.contract import MODEL_NAME
from server.triton.endpoint import GRPC_ADMIN_HEADER

BACKEND_FILE = "model.py"
PROMOTION_FILE = "promoted.json"
FIRST_VERSION = "1"


def versions(repository: Path = MODEL_REPOSITORY, model_name: str = MODEL_NAME) -> list[str]:
    """Published versions, oldest first."""
    return sorted((p.name for p in (repository / model_name).iterdir() if p.is_dir() and p.name.isdigit()), key=int)


def _recorded(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text())["version"])
    except FileNotFoundError:
        return None


def promoted(repository: Path = MODEL_REPOSITORY, model_name: str = MODEL_NAME) -> str | None:
    """The version the promotion gate last promoted; None if it never promoted one."""
    path = repository / model_name / PROMOTION_FILE
    version = _recorded(path)
    if version is None:
        return None
    if not (repository / model_name / version / "model.onnx").is_file():
        raise FileNotFoundError(f"{path} names version {version}, but {repository / model_name / version} holds no "
                                "model.onnx: rebuild it (make robust-encoder) or delete the record to serve "
                                f"version {FIRST_VERSION}")
    return version


def record_promotion(version: str, reason: str, repository: Path = MODEL_REPOSITORY,
                     model_name: str = MODEL_NAME) -> Path:
    """Make `version` what new data directories serve (written atomically: a reader sees old or new)."""
    if version not in versions(repository, model_name):
        raise ValueError(f"no published version {version} in {repository / model_name}")
    path = repository / model_name / PROMOTION_FILE
    write_atomic(path, (json.dumps({"version": version, "reason": reason}, indent=1) + "\n").encode())
    return path


def withdraw_promotion(version: str, repository: Path = MODEL_REPOSITORY, model_name: str = MODEL_NAME) -> bool:
    """Forget the promotion of `version` (a rebuilt candidate the gate refused); False if it was not promoted."""
    path = repository / model_name / PROMOTION_FILE
    if _recorded(path) != version:
        return False
    path.unlink()
    return True


def default_version(settings: Settings) -> str:
    """The encoder version a new data directory starts on: the configured one, else the promoted one, else 1."""
    return settings.model_version or promoted(settings.model_repository, settings.model_name) or FIRST_VERSION


def publish(checkpoint: Path | None, repository: Path = MODEL_REPOSITORY,
            model_name: str = MODEL_NAME) -> str:
    """Export `checkpoint` (None: the pretrained encoder) as the next version; returns its number."""
    model_dir = repository / model_name
    existing = versions(repository, model_name)
    version = str(int(existing[-1]) + 1 if existing else 1)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir))
    try:
        export_onnx(staging / "model.onnx", checkpoint)
        shutil.copy2(model_dir / existing[0] / BACKEND_FILE, staging / BACKEND_FILE)
        os.rename(staging, model_dir / version)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version


def export_onnx(output: Path, checkpoint: Path | None) -> None:
    """Run the training package's exporter in a child process: serving code never imports training code
    (nor torch), so a gateway host needs neither; the exporter checks the graph against PyTorch itself."""
    command = [sys.executable, "-m", "training.export_onnx", "--output", str(output)]
    if checkpoint is not None:
        command += ["--checkpoint", str(checkpoint)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ONNX export failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")


def reload(triton_grpc_url: str, model_name: str = MODEL_NAME, admin_key: str | None = None) -> list[str]:
    """Ask Triton to reload the model: new versions load, served ones keep serving. Returns the loaded versions.
    The model-repository API needs the launcher's admin key (server/triton/endpoint.py)."""
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(triton_grpc_url)
    try:
        client.load_model(model_name, headers={GRPC_ADMIN_HEADER: admin_key} if admin_key else None)
        return sorted(client.get_model_metadata(model_name, as_json=True)["versions"], key=int)
    finally:
        client.close()
