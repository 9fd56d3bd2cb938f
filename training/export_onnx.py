"""Export the encoder to ONNX: uint8 pixels in, unit embeddings out, dynamic batch axis.

    python -m training.export_onnx --output model_repository/encoder/1/model.onnx [--checkpoint CKPT]
                                   [--fine-tuned-share S]   (S < 1: WiSE-FT mix with the pretrained weights)
                                   [--fp16-weights]         (half the file: for versions committed to the repo)
                                   [--pooled-regions]       (a second output: the regions from the same pass)
    python -m training.export_onnx --from model_repository/encoder/2/model.onnx --pooled-regions \
                                   --output model_repository/encoder/3/model.onnx   (an exported graph + regions)

The graph is checked with ONNX Runtime against PyTorch before it is (atomically) written. With `--fp16-weights`
the float weights are stored as float16 and cast back to float32 by the graph itself (ONNX Runtime folds the casts
when it loads the model): the arithmetic stays float32, only the weights are rounded, and the file halves.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from server.core.regions import REGION_BOXES, region_pooling_weights
from server.embedding.contract import INPUT_NAME, INPUT_SIZE, OUTPUT_NAME, REGIONS_OUTPUT_NAME
from server.embedding.onnx_encoder import OnnxEncoder, feature_map_name, with_output
from training.encoder_model import load_encoder

OPSET = 17


FP16_TOLERANCE = 2e-3  # float16 weights: per-dimension differences of unit vectors stay this small (cosine > 0.9999)


def store_weights_as_fp16(path: Path) -> None:
    """Rewrite an ONNX file so its float32 weights are stored as float16, each cast back to float32 in the graph."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    kept, casts = [], []
    for tensor in graph.initializer:
        if tensor.data_type != TensorProto.FLOAT or np.prod(tensor.dims) < 16:  # scalars and shapes stay as they are
            kept.append(tensor)
            continue
        half = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), f"{tensor.name}__fp16")
        kept.append(half)
        casts.append(helper.make_node("Cast", [half.name], [tensor.name], to=TensorProto.FLOAT,
                                      name=f"{tensor.name}__to_fp32"))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    for node in reversed(casts):
        graph.node.insert(0, node)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _feature_map_shape(model: onnx.ModelProto, name: str) -> tuple[int, int, int]:
    """(C, H, W) of an intermediate tensor, by running the graph once (static shape inference stops at the
    float16 weights' casts)."""
    import onnxruntime as ort

    session = ort.InferenceSession(with_output(model, name).SerializeToString(), providers=["CPUExecutionProvider"])
    found = session.run([name], {INPUT_NAME: np.zeros((1, INPUT_SIZE, INPUT_SIZE, 3), np.uint8)})[0]
    _, channels, height, width = found.shape
    return channels, height, width


def add_region_output(path: Path) -> None:
    """Give the graph a second output, REGIONS_OUTPUT_NAME [N, R, dim]: the REGION_BOXES of the whole image,
    average-pooled from the same last feature map the embedding pools (R-MAC-style regional pooling), L2-normalised.
    The regions then cost no encoder pass of their own; the embedding output is untouched."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    if any(o.name == REGIONS_OUTPUT_NAME for o in graph.output):
        return
    feature_map = feature_map_name(model)
    channels, height, width = _feature_map_shape(model, feature_map)
    if height != width or not height:
        raise ValueError(f"the feature map must be square, got {height}x{width}")
    weights = numpy_helper.from_array(region_pooling_weights(height), "regions__weights")
    flat_shape = numpy_helper.from_array(np.array([0, channels, height * width], np.int64), "regions__flat_shape")
    graph.initializer.extend([weights, flat_shape])
    graph.node.extend([
        helper.make_node("Reshape", [feature_map, flat_shape.name], ["regions__flat"]),  # [N, C, HW]
        helper.make_node("MatMul", ["regions__flat", weights.name], ["regions__pooled"]),  # [N, C, R]
        helper.make_node("Transpose", ["regions__pooled"], ["regions__rows"], perm=[0, 2, 1]),  # [N, R, C]
        helper.make_node("LpNormalization", ["regions__rows"], [REGIONS_OUTPUT_NAME], axis=-1, p=2),
    ])
    graph.output.append(helper.make_tensor_value_info(REGIONS_OUTPUT_NAME, TensorProto.FLOAT,
                                                      ["batch", len(REGION_BOXES), channels]))
    onnx.checker.check_model(model)
    tmp = path.with_suffix(".regions.tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)


def export(output: Path, checkpoint: Path | None = None, fine_tuned_share: float = 1.0, fp16_weights: bool = False
           ) -> float:
    """Write the ONNX graph; returns the max abs difference vs PyTorch on a probe batch."""
    model = load_encoder(checkpoint, fine_tuned_share)
    seeded = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 256, (3, INPUT_SIZE, INPUT_SIZE, 3), dtype=torch.uint8, generator=seeded)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=output.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        torch.onnx.export(
            model, (probe,), tmp, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET, dynamo=False,
        )
        if fp16_weights:
            store_weights_as_fp16(Path(tmp))
        got = OnnxEncoder(Path(tmp)).run(probe.numpy())  # what Triton's CPU model will run
        with torch.no_grad():
            want = model(probe).numpy()
        diff = float(np.abs(got - want).max())
        if diff > (FP16_TOLERANCE if fp16_weights else 1e-4):
            raise RuntimeError(f"ONNX export differs from PyTorch by {diff}")
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return diff


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--checkpoint", type=Path, default=None, help="fine-tuned checkpoint (default: pretrained)")
    parser.add_argument("--fine-tuned-share", type=float, default=1.0,
                        help="mix the checkpoint's weights with the pretrained ones: share x fine-tuned + "
                             "(1 - share) x pretrained (WiSE-FT; default 1: the checkpoint as it is)")
    parser.add_argument("--fp16-weights", action="store_true", help="store the weights as float16 (half the file)")
    parser.add_argument("--pooled-regions", action="store_true",
                        help="add the regions output, pooled from the whole image's pass (add_region_output)")
    parser.add_argument("--from", dest="source", type=Path, default=None,
                        help="start from this exported graph instead of exporting PyTorch weights")
    args = parser.parse_args(argv)
    if args.source is None:
        diff = export(args.output, args.checkpoint, args.fine_tuned_share, args.fp16_weights)
        print(f"wrote {args.output} ({args.output.stat().st_size / 1e6:.1f} MB, max |onnx - torch| = {diff:.2e})")
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.output.with_suffix(".onnx.tmp")
        tmp.write_bytes(args.source.read_bytes())
        os.replace(tmp, args.output)
    if args.pooled_regions:
        add_region_output(args.output)
        print(f"{args.output}: added the {REGIONS_OUTPUT_NAME} output ({len(REGION_BOXES)} pooled regions)")


if __name__ == "__main__":
    main()
