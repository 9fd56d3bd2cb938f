"""Build the TensorRT plan for GPU hosts from the same ONNX graph the CPU hosts serve.

    python deploy/gpu/build_trt_plan.py --onnx model_repository/encoder/1/model.onnx \
        --output model_repository/encoder/1/model.plan [--max-batch 64] [--no-fp16]

FP16, one optimisation profile spanning batch 1..max_batch (opt = preferred batch 16). Run it on the
GPU host (inside NVIDIA's Triton 24.10 container, or with `pip install .[gpu]`): a plan is specific to the
GPU model and the TensorRT version that built it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from server.embedding.contract import INPUT_NAME, INPUT_SIZE

INPUT_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)


def gpu_available() -> tuple[bool, str]:
    """(True, "") on a host where a plan can be built, else (False, why)."""
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False, "TensorRT is not installed (GPU hosts: pip install '.[gpu]')"
    try:
        import ctypes

        cuda = ctypes.CDLL("libcuda.so.1")
        count = ctypes.c_int(0)
        if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
            return False, "no CUDA GPU visible"
    except OSError:
        return False, "no CUDA driver (libcuda.so.1) on this host"
    return True, ""


def build(onnx_path: Path, output: Path, max_batch: int = 64, opt_batch: int = 16, fp16: bool = True) -> Path:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, *INPUT_SHAPE), (opt_batch, *INPUT_SHAPE), (max_batch, *INPUT_SHAPE))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT failed to build the engine (see the log above)")
    tmp = output.with_suffix(".plan.tmp")
    tmp.write_bytes(bytes(plan))
    tmp.replace(output)
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--onnx", type=Path, default=Path("model_repository/encoder/1/model.onnx"))
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--no-fp16", action="store_true")
    args = parser.parse_args(argv)
    ok, why = gpu_available()
    if not ok:
        sys.exit(f"cannot build a TensorRT plan here: {why}")
    out = build(args.onnx, args.output or args.onnx.with_name("model.plan"), args.max_batch, fp16=not args.no_fp16)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
