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


def store_weights_as_fp16(path: Path, prefix: str = "") -> None:
    """Rewrite an ONNX file so its float32 weights (those whose name starts with `prefix`) are stored as float16,
    each cast back to float32 in the graph."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    kept, casts = [], []
    for tensor in graph.initializer:
        if (tensor.data_type != TensorProto.FLOAT or np.prod(tensor.dims) < 16  # scalars and shapes stay as they are
                or not tensor.name.startswith(prefix)):
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


def add_region_output(path: Path, head: Path | None = None, fp16_weights: bool = False) -> None:
    """Give the graph a second output, REGIONS_OUTPUT_NAME [N, R, dim], computed from the same last feature map the
    embedding pools, so the regions cost no encoder pass of their own (the embedding output is untouched):
    - no `head`: each REGION_BOXES box average-pooled (R-MAC-style regional pooling), L2-normalised;
    - `head` (a training.region_head checkpoint): the learned head's pooling and residual MLP, L2-normalised."""
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    if any(o.name == REGIONS_OUTPUT_NAME for o in graph.output):
        return
    feature_map = feature_map_name(model)
    channels, height, width = _feature_map_shape(model, feature_map)
    if height != width or not height:
        raise ValueError(f"the feature map must be square, got {height}x{width}")
    constants = {"flat_shape": np.array([0, channels, height * width], np.int64)}
    nodes = [helper.make_node("Reshape", [feature_map, "regions__flat_shape"], ["regions__flat"])]  # [N, C, HW]
    if head is None:
        constants["weights"] = region_pooling_weights(height)
        nodes += [
            helper.make_node("MatMul", ["regions__flat", "regions__weights"], ["regions__pooled"]),  # [N, C, R]
            helper.make_node("Transpose", ["regions__pooled"], ["regions__rows"], perm=[0, 2, 1]),  # [N, R, C]
        ]
    else:
        from training.region_head import head_inputs

        constants.update(region_head_constants(head, height))
        fine_map = head_inputs(model)[1]
        constants["fine_shape"] = np.array([0, constants["fine"].shape[0], 4 * height * width], np.int64)
        nodes += [
            helper.make_node("Reshape", [fine_map, "regions__fine_shape"], ["regions__fine_flat"]),  # [N, Cf, 4HW]
            helper.make_node("MatMul", ["regions__fine_flat", "regions__fine_weights"], ["regions__fine_t"]),
            helper.make_node("Transpose", ["regions__fine_t"], ["regions__fine_pooled"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["regions__fine_pooled", "regions__fine"], ["regions__fine_h"]),  # [N, R, H]
            helper.make_node("MatMul", ["regions__flat", "regions__weights"], ["regions__pooled_t"]),  # [N, C, R]
            helper.make_node("Transpose", ["regions__pooled_t"], ["regions__pooled"], perm=[0, 2, 1]),  # [N, R, C]
            helper.make_node("MatMul", ["regions__flat", "regions__mean"], ["regions__mean_t"]),  # [N, C, 1]
            helper.make_node("Transpose", ["regions__mean_t"], ["regions__whole"], perm=[0, 2, 1]),  # [N, 1, C]
            helper.make_node("MatMul", ["regions__pooled", "regions__local"], ["regions__local_h"]),  # [N, R, H]
            helper.make_node("MatMul", ["regions__whole", "regions__context"], ["regions__context_h"]),  # [N, 1, H]
            helper.make_node("Add", ["regions__local_h", "regions__context_h"], ["regions__lc_h"]),
            helper.make_node("Add", ["regions__lc_h", "regions__fine_h"], ["regions__sum_h"]),
            helper.make_node("Add", ["regions__sum_h", "regions__bias"], ["regions__pre_h"]),
            helper.make_node("Relu", ["regions__pre_h"], ["regions__hidden"]),
            helper.make_node("MatMul", ["regions__hidden", "regions__out"], ["regions__delta_w"]),  # [N, R, C]
            helper.make_node("Add", ["regions__delta_w", "regions__out_bias"], ["regions__delta"]),
            helper.make_node("Add", ["regions__pooled", "regions__delta"], ["regions__rows"]),
        ]
    nodes.append(helper.make_node("LpNormalization", ["regions__rows"], [REGIONS_OUTPUT_NAME], axis=-1, p=2))
    graph.initializer.extend(numpy_helper.from_array(value, f"regions__{name}") for name, value in constants.items())
    graph.node.extend(nodes)
    graph.output.append(helper.make_tensor_value_info(REGIONS_OUTPUT_NAME, TensorProto.FLOAT,
                                                      ["batch", len(REGION_BOXES), channels]))
    onnx.checker.check_model(model)
    tmp = path.with_suffix(".regions.tmp")
    onnx.save(model, str(tmp))
    if fp16_weights:  # the head's weights; the encoder's are as the source graph stores them
        store_weights_as_fp16(tmp, prefix="regions__")
    os.replace(tmp, path)


def region_head_constants(checkpoint: Path, cells: int) -> dict[str, np.ndarray]:
    """The trained head (training/region_head.py) as the matrices of its graph."""
    from training.region_head import load_head

    head = load_head(checkpoint)
    if head.pool_logits.shape[0] != cells * cells:
        raise ValueError(f"the head was trained on a {head.pool_logits.shape[0]}-cell map, this graph has "
                         f"{cells}x{cells}")
    with torch.no_grad():
        weights, fine_weights = head.pooling_weights()
        as_numpy = {
            "weights": weights, "fine_weights": fine_weights, "fine": head.fine.weight.T,
            "mean": torch.full((cells * cells, 1), 1.0 / (cells * cells)),
            "local": head.local.weight.T, "context": head.context.weight.T,
            "bias": head.local.bias + head.box_bias,
            "out": head.out.weight.T, "out_bias": head.out.bias,
        }
        return {k: np.ascontiguousarray(v.numpy(), np.float32) for k, v in as_numpy.items()}


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
    parser.add_argument("--region-head", type=Path, default=None,
                        help="with --pooled-regions: the regions from this learned head (training/region_head.py)")
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
        add_region_output(args.output, args.region_head, args.fp16_weights)
        how = f"the learned head {args.region_head}" if args.region_head else "pooled"
        print(f"{args.output}: added the {REGIONS_OUTPUT_NAME} output ({len(REGION_BOXES)} regions, {how})")


if __name__ == "__main__":
    main()
