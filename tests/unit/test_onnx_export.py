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
from PIL import Image

from devkit.corpus import real_photos
from server.core.config import MODEL_REPOSITORY, REPO_ROOT
from server.core.regions import REGION_BOXES, region_pooling_weights
from server.embedding import imaging
from server.embedding.contract import OUTPUT_NAME, REGIONS_OUTPUT_NAME
from server.embedding.onnx_encoder import OnnxEncoder, feature_map_name, graph_has_pooled_regions, with_output
from training.encoder_model import load_encoder
from training.export_onnx import add_region_output

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


def _box_means(feature_map: np.ndarray, upscale: int = 60) -> np.ndarray:
    """[N, R, C]: each REGION_BOXES box averaged over the map blown up `upscale` x per cell (pixel counting, not
    the export's overlap formula), L2-normalised."""
    side = feature_map.shape[3] * upscale
    rows = []
    for x_min, y_min, x_max, y_max in REGION_BOXES:  # a box mean is separable: columns first, then rows
        columns = feature_map.repeat(upscale, axis=3)[..., round(x_min * side):round(x_max * side)].mean(axis=3)
        mean = columns.repeat(upscale, axis=2)[..., round(y_min * side):round(y_max * side)].mean(axis=2)
        rows.append(mean / np.linalg.norm(mean, axis=1, keepdims=True))
    return np.stack(rows, axis=1)


def test_region_output_pools_the_boxes_from_the_same_pass_and_leaves_the_embedding_alone(tmp_path, photos):
    """A version with pooled regions: the graph's second output is each region box average-pooled from the last
    feature map (the one the embedding pools whole); the embedding itself is bit-identical."""
    import onnx

    path = tmp_path / "pooled.onnx"
    path.write_bytes(ONNX.read_bytes())
    add_region_output(path)
    add_region_output(path)  # idempotent
    model = onnx.load(str(path))
    assert [o.name for o in model.graph.output] == [OUTPUT_NAME, REGIONS_OUTPUT_NAME]
    session = ort.InferenceSession(with_output(model, feature_map_name(model)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    whole, regions, fmap = session.run(None, {"pixels": photos})
    original = ort.InferenceSession(str(ONNX), providers=["CPUExecutionProvider"]).run(None, {"pixels": photos})[0]
    assert np.array_equal(whole, original)
    assert regions.shape == (len(photos), len(REGION_BOXES), 1280)
    np.testing.assert_allclose(regions, _box_means(fmap), atol=2e-3)  # the box edges fall inside a 60x cell
    assert not np.allclose(regions[:, 0], regions[:, 1])  # different boxes, different vectors
    encoder = OnnxEncoder(path)
    assert encoder.pooled_regions and graph_has_pooled_regions(path) and not graph_has_pooled_regions(ONNX)
    got_whole, got_regions = encoder.run_with_regions(photos, batch=4)
    np.testing.assert_allclose(got_whole, whole, atol=1e-6)
    np.testing.assert_allclose(got_regions, regions, atol=1e-6)
    with pytest.raises(ValueError, match="no pooled regions"):
        OnnxEncoder(ONNX).run_with_regions(photos[:1])


def test_the_region_study_pools_what_the_exported_graph_serves(tmp_path, photos):
    """evaluation/region_variants.py scores pooled regions with its own any-size session: at 224 px they must be
    the exported graph's `regions` output, or the study measures something that is never served."""
    from evaluation.region_variants import feature_map_session, pool_boxes

    session, feature_map = feature_map_session("1")
    studied = pool_boxes(session.run([feature_map], {"pixels": photos})[0])
    path = tmp_path / "pooled.onnx"
    path.write_bytes(ONNX.read_bytes())
    add_region_output(path)
    served = OnnxEncoder(path).run_with_regions(photos)[1]
    np.testing.assert_allclose(studied, served, atol=1e-5)
    larger = np.stack([np.asarray(Image.fromarray(p).resize((320, 320)), np.uint8) for p in photos[:2]])
    assert session.run([feature_map], {"pixels": larger})[0].shape[2:] == (10, 10)  # any side: 320 px -> 10x10


@pytest.mark.parametrize("fp16", [False, True], ids=["float32", "float16-weights"])
def test_a_learned_region_head_in_the_graph_computes_what_it_learned(tmp_path, photos, fp16):
    """training/region_head.py's head exported as the graph's regions output: the same rows as the PyTorch head
    on the graph's own feature maps (a random head, so every weight and the fine map's wiring count), and the
    embedding untouched."""
    import onnx

    from training.region_head import RegionHead, head_inputs

    torch.manual_seed(0)
    head = RegionHead(1280, 7, 112, hidden=32)
    with torch.no_grad():
        for parameter in head.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    checkpoint = tmp_path / "head.pt"
    torch.save({"state": head.state_dict(), "channels": 1280, "cells": 7, "fine_channels": 112, "hidden": 32},
               checkpoint)
    path = tmp_path / "head.onnx"
    path.write_bytes(ONNX.read_bytes())
    add_region_output(path, checkpoint, fp16_weights=fp16)
    model = onnx.load(str(ONNX))
    coarse, fine = head_inputs(model)
    probe = ort.InferenceSession(with_output(with_output(model, coarse), fine).SerializeToString(),
                                 providers=["CPUExecutionProvider"])
    whole, maps, fine_maps = probe.run(None, {"pixels": photos})
    with torch.no_grad():
        want = head(torch.from_numpy(maps.reshape(len(photos), 1280, -1)),
                    torch.from_numpy(fine_maps.reshape(len(photos), 112, -1))).numpy()
    got_whole, got = OnnxEncoder(path).run_with_regions(photos)
    assert np.array_equal(got_whole, whole)
    np.testing.assert_allclose(got, want, atol=2e-3 if fp16 else 1e-5)
    pooled = OnnxEncoder(path).run_with_regions(photos)[1]
    assert not np.allclose(pooled[:, 0], pooled[:, 1])


def test_region_pooling_weights_cover_each_box_once():
    weights = region_pooling_weights(7)
    assert weights.shape == (49, len(REGION_BOXES))
    np.testing.assert_allclose(weights.sum(axis=0), 1.0, rtol=1e-6)
    centre = weights[:, -1].reshape(7, 7)  # (0.25, 0.25, 0.75, 0.75): the centre quarter
    assert centre[0].sum() == 0 and centre[:, 0].sum() == 0 and centre[3, 3] == centre.max()


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
