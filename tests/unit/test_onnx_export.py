"""One exported graph for every backend: ONNX Runtime matches PyTorch on real photos; TensorRT on GPU hosts."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from devkit.corpus import real_photos
from server.core.config import MODEL_REPOSITORY, REPO_ROOT
from server.embedding import imaging
from training.encoder_model import load_encoder

ONNX = MODEL_REPOSITORY / "encoder/1/model.onnx"


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    picked = [p for p in real_photos() if p.source == "scikit-image"][:5] + list(real_photos()[::25])[:5]
    return np.stack([imaging.prepare(p.path.read_bytes()) for p in picked])


def test_onnx_runtime_matches_pytorch_on_real_photos(photos):
    session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(uint8)" and session.get_inputs()[0].shape[0] != 1
    got = session.run(None, {"pixels": photos})[0]
    with torch.no_grad():
        want = load_encoder()(torch.from_numpy(photos)).numpy()
    cosine = np.sum(got * want, axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert got.shape == (len(photos), 1280)
    assert cosine.min() >= 0.9999, cosine


def test_export_cli_writes_a_graph(tmp_path):
    out = tmp_path / "m.onnx"
    subprocess.run([sys.executable, "-m", "training.export_onnx", "--output", str(out)], check=True, cwd=REPO_ROOT,
                   capture_output=True)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    batch = np.zeros((3, 224, 224, 3), np.uint8)
    assert session.run(None, {"pixels": batch})[0].shape == (3, 1280)


def test_float16_weights_halve_the_file_and_keep_the_embeddings(tmp_path, photos):
    """What a committed version ships: the weights stored as float16, the arithmetic still float32."""
    out = tmp_path / "half.onnx"
    subprocess.run([sys.executable, "-m", "training.export_onnx", "--output", str(out), "--fp16-weights"],
                   check=True, cwd=REPO_ROOT, capture_output=True)
    assert out.stat().st_size < 0.55 * ONNX.stat().st_size
    half = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert half.get_inputs()[0].type == "tensor(uint8)" and half.get_outputs()[0].type == "tensor(float)"
    full = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    got, want = half.run(None, {"pixels": photos})[0], full.run(None, {"pixels": photos})[0]
    assert np.sum(got * want, axis=1).min() >= 0.9999


def _trt_reason() -> str:
    spec = importlib.util.spec_from_file_location("build_trt_plan", REPO_ROOT / "deploy/gpu/build_trt_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ok, why = module.gpu_available()
    return "" if ok else why


@pytest.mark.gpu
@pytest.mark.skipif(bool(_trt_reason()), reason=f"TensorRT plan build needs a GPU: {_trt_reason()}")
def test_tensorrt_plan_builds_and_matches_onnx(tmp_path, photos):  # pragma: no cover - GPU hosts only
    plan = tmp_path / "model.plan"
    subprocess.run([sys.executable, "deploy/gpu/build_trt_plan.py", "--onnx", str(ONNX), "--output", str(plan)],
                   check=True, cwd=REPO_ROOT)
    assert plan.stat().st_size > 1_000_000


@pytest.mark.parametrize("config", ["config.pbtxt", "configs/gpu.pbtxt", "configs/no_batching.pbtxt"])
def test_triton_configs_state_the_same_contract_as_the_code(config):
    """server/embedding/contract.py and every Triton config of the encoder agree (names, sizes, batch limit)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    from server.embedding import contract

    parsed = text_format.Parse((MODEL_REPOSITORY / "encoder" / config).read_text(), model_config_pb2.ModelConfig())
    assert parsed.name == contract.MODEL_NAME
    assert (parsed.input[0].name, list(parsed.input[0].dims)) == (
        contract.INPUT_NAME, [contract.INPUT_SIZE, contract.INPUT_SIZE, 3])
    assert (parsed.output[0].name, list(parsed.output[0].dims)) == (contract.OUTPUT_NAME, [contract.EMBEDDING_DIM])
    assert parsed.max_batch_size in (0, contract.MAX_BATCH_SIZE)
    session = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [contract.INPUT_NAME]
    assert [o.name for o in session.get_outputs()] == [contract.OUTPUT_NAME]


def test_dali_preprocessing_matches_the_cpu_path_on_real_photos():  # pragma: no cover - GPU hosts
    """GPU hosts: the DALI pipeline (nvJPEG) gives the CPU path's pixels up to resampling differences."""
    sys.path.insert(0, str(REPO_ROOT))
    from deploy.gpu.build_dali_pipeline import build, dali_available

    ok, why = dali_available()
    if not ok:
        pytest.skip(f"DALI preprocessing needs a GPU: {why}")
    from nvidia.dali.pipeline import Pipeline

    path = build(Path(tempfile.mkdtemp()) / "model.dali", max_batch=4)
    pipe = Pipeline.deserialize(filename=str(path))
    pipe.build()
    jpegs = [p.path.read_bytes() for p in real_photos() if p.path.suffix.lower() in (".jpg", ".jpeg")][:4]
    crops = np.array([(0.0, 0.0, 1.0, 1.0), (0.3, 0.0, 0.75, 0.45)] * 2, np.float32)
    pipe.feed_input("image_bytes", [np.frombuffer(j, np.uint8) for j in jpegs])
    pipe.feed_input("crop", list(crops))
    (pixels,) = pipe.run()
    for n, got in enumerate(pixels.as_cpu().as_array()):
        box = None if n % 2 == 0 else imaging.CropBox(*crops[n])
        want = imaging.prepare(jpegs[n], box)
        assert np.abs(got.astype(int) - want.astype(int)).mean() < 6
