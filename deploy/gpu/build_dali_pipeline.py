"""Build the DALI preprocessing model for GPU hosts: JPEG/PNG decoded by nvJPEG on the GPU, crop, resize.

    python deploy/gpu/build_dali_pipeline.py [--output model_repository/preprocess_dali/1/model.dali]

Same contract as the CPU path (`server.embedding.imaging.prepare`): EXIF orientation applied, the normalized crop
box cut out, the result squashed (no centre crop) to 224x224 RGB uint8 with bilinear, antialiased resizing. The
`image_encoder` model calls it by BLS when started with `--model-config-name=gpu` and falls back to the CPU path
for what nvJPEG does not decode (GIF, WebP, transparent PNGs, which the CPU path puts on white). Needs
`nvidia-dali-cuda120` (inside NVIDIA's Triton container DALI is already present).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script from anywhere
from server.embedding.contract import CROP_INPUT_NAME, IMAGE_INPUT_NAME, INPUT_NAME, INPUT_SIZE

DEFAULT_OUTPUT = Path(__file__).resolve().parents[2] / "model_repository/preprocess_dali/1/model.dali"


def dali_available() -> tuple[bool, str]:
    """(True, "") where the pipeline can be built and run, else (False, why)."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return False, "NVIDIA DALI is not installed (GPU hosts: pip install nvidia-dali-cuda120, or NVIDIA's container)"
    from deploy.gpu.build_trt_plan import gpu_available

    return gpu_available()


def build(output: Path = DEFAULT_OUTPUT, max_batch: int = 64) -> Path:
    from nvidia import dali
    from nvidia.dali import fn, types

    @dali.pipeline_def(batch_size=max_batch, num_threads=4, device_id=0)
    def preprocess():
        encoded = fn.external_source(name=IMAGE_INPUT_NAME, dtype=types.UINT8, device="cpu")
        crop = fn.external_source(name=CROP_INPUT_NAME, dtype=types.FLOAT, device="cpu")
        images = fn.decoders.image(encoded, device="mixed", output_type=types.RGB, adjust_orientation=True)
        # crop = (x_min, y_min, x_max, y_max), normalized; slice takes (x, y) anchor and shape on axes "WH".
        anchor = fn.stack(crop[0], crop[1])
        shape = fn.stack(crop[2] - crop[0], crop[3] - crop[1])
        images = fn.slice(images, anchor, shape, axis_names="WH", normalized_anchor=True, normalized_shape=True)
        images = fn.resize(images, resize_x=INPUT_SIZE, resize_y=INPUT_SIZE, interp_type=types.INTERP_LINEAR,
                           antialias=True)
        return fn.cast(images, dtype=types.UINT8)

    output.parent.mkdir(parents=True, exist_ok=True)
    pipe = preprocess()
    pipe.serialize(filename=str(output))
    print(f"wrote {output} (output {INPUT_NAME!r}: uint8 [N, {INPUT_SIZE}, {INPUT_SIZE}, 3])")
    return output


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--max-batch", type=int, default=64)
    args = parser.parse_args(argv)
    ok, why = dali_available()
    if not ok:
        sys.exit(f"cannot build the DALI pipeline here: {why}")
    build(args.output, args.max_batch)


if __name__ == "__main__":
    main()
