"""How an image's regions are made, against what they cost (issue 26, part 2): one encoder version, one held-out set.

    python -m evaluation.region_variants [--version 2]

Every variant indexes each held-out gallery image whole (the 224-px pass every variant shares) plus region vectors
made one of these ways, and is scored by the serving rules (server.core.regions.best_match) on the copy-detection
and category sets of `python -m evaluation.quality` (held out from training):
- `encoded`: today's regions, each REGION_BOXES view cropped, resized to 224 px and encoded (6 more passes);
- `pooled@S`: the boxes average-pooled from the last feature map of one pass over the whole image at S px (224: the
  pass the whole vector comes from, what `training/export_onnx.py --pooled-regions` exports; 320: a second pass
  whose box cells see the crops' scale);
- `encoded@S`: the encoded views at S px instead of 224 (a pass costs (S/224)^2 of a 224-px one; the network is
  fully convolutional, the query is still encoded at 224);
- mixes: some boxes pooled, the centre quarter encoded;
- `--graph NAME=PATH`: the `regions` output of an exported graph over the same whole-image inputs (a version whose
  regions come from its one pass: pooled, or a learned head, training/region_head.py), cost 1.
Cost = encoder inputs per image in 224-px passes (a 320-px pass costs (320/224)^2 = 2.04 of them).
Writes benchmarks/results/region_variants.{json,md}.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image
from tqdm import tqdm

from evaluation.quality import Prepared, VersionEmbedder, build, category_retrieval, copy_detection
from evaluation.quality_sets import DEFAULT_SEED
from reporting.results import markdown_table, run_info, write_results
from server.core.config import MODEL_REPOSITORY
from server.core.regions import REGION_BOXES, region_pooling_weights
from server.embedding.contract import INPUT_NAME, INPUT_SIZE
from server.embedding.onnx_encoder import OnnxEncoder, feature_map_name, model_path, with_output

CENTRE_QUARTER = REGION_BOXES.index((0.25, 0.25, 0.75, 0.75))


def feature_map_session(version: str, threads: int = 2) -> tuple[ort.InferenceSession, str]:
    """The version's graph with any square input side, outputting the last feature map (the tensor its embedding
    averages)."""
    model = onnx.load(str(model_path(version, MODEL_REPOSITORY)))
    for dim in model.graph.input[0].type.tensor_type.shape.dim[1:3]:
        dim.ClearField("dim_value")
        dim.dim_param = "side"
    feature_map = feature_map_name(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(with_output(model, feature_map).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session, feature_map


def pooled_regions(prep: Prepared, version: str, side: int, batch: int = 16) -> np.ndarray:
    """[gallery, R, dim]: REGION_BOXES average-pooled from one pass over each gallery image resized to `side`."""
    session, feature_map = feature_map_session(version)
    parts = []
    for start in tqdm(range(0, len(prep.gallery), batch), desc=f"v{version} pooled regions @{side}px", unit="batch"):
        pixels = np.stack([np.asarray(item.load().convert("RGB").resize(
            (side, side), Image.Resampling.BILINEAR, reducing_gap=2.0), np.uint8)
            for item in prep.gallery[start:start + batch]])
        parts.append(pool_boxes(session.run([feature_map], {INPUT_NAME: pixels})[0]))
    return np.concatenate(parts)


def pool_boxes(maps: np.ndarray) -> np.ndarray:
    """Feature maps [N, C, H, H] -> [N, R, C]: each REGION_BOXES box average-pooled, L2-normalised (what the
    exported `regions` output computes at 224 px)."""
    flat = maps.reshape(maps.shape[0], maps.shape[1], -1)
    rows = np.einsum("nch,hr->nrc", flat, region_pooling_weights(maps.shape[2]))
    return (rows / np.linalg.norm(rows, axis=2, keepdims=True)).astype(np.float32)


def encoded_at(region_pixels: np.ndarray, version: str, side: int, images: int, batch: int = 64) -> np.ndarray:
    """[images, R, dim]: the REGION_BOXES views (224 px) resized to `side` px and encoded at that size."""
    session, _ = feature_map_session(version)
    embedding = session.get_outputs()[0].name
    parts = []
    for start in tqdm(range(0, len(region_pixels), batch), desc=f"v{version} regions encoded @{side}px",
                      unit="batch"):
        pixels = np.stack([np.asarray(Image.fromarray(view).resize((side, side), Image.Resampling.BILINEAR,
                                                                   reducing_gap=2.0), np.uint8)
                           for view in region_pixels[start:start + batch]])
        parts.append(session.run([embedding], {INPUT_NAME: pixels})[0])
    return np.concatenate(parts).reshape(images, len(REGION_BOXES), -1)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", default="2")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--graph", action="append", default=[], metavar="NAME=PATH",
                        help="also a graph's own regions output (its whole-image output must be --version's)")
    parser.add_argument("--only-graphs", action="store_true", help="skip the encoded@S and pooled@320 variants")
    args = parser.parse_args(argv)
    started = time.monotonic()
    prep = build(args.seed)
    embedder = VersionEmbedder(args.version)
    gallery = embedder.embed(prep.gallery_pixels, "gallery")
    queries = embedder.embed(prep.copy_pixels, "copy queries")
    encoded = embedder.embed(prep.region_pixels, "encoded regions").reshape(len(gallery), len(REGION_BOXES), -1)
    at_224 = pooled_regions(prep, args.version, INPUT_SIZE)
    centre = encoded[:, CENTRE_QUARTER:CENTRE_QUARTER + 1]
    others = [r for r in range(len(REGION_BOXES)) if r != CENTRE_QUARTER]
    variants: dict[str, tuple[float, np.ndarray | None]] = {
        "whole only": (1, None),
        "encoded (today)": (1 + len(REGION_BOXES), encoded),
        "pooled@224": (1, at_224),
        "centre quarter encoded": (2, centre),
        "pooled@224 + centre quarter encoded": (2, np.concatenate([at_224[:, others], centre], axis=1)),
    }
    if not args.only_graphs:
        at_320, second_pass = pooled_regions(prep, args.version, 320), (320 / INPUT_SIZE) ** 2
        small = {side: encoded_at(prep.region_pixels, args.version, side, len(gallery)) for side in (160, 112)}
        variants |= {
            "encoded@160": (1 + len(REGION_BOXES) * (160 / INPUT_SIZE) ** 2, small[160]),
            "encoded@112": (1 + len(REGION_BOXES) * (112 / INPUT_SIZE) ** 2, small[112]),
            "pooled@320": (1 + second_pass, at_320),
            "pooled@320 + centre quarter encoded": (2 + second_pass,
                                                    np.concatenate([at_320[:, others], centre], axis=1)),
        }
    for spec in args.graph:
        name, path = spec.split("=", 1)
        whole, regions = OnnxEncoder(Path(path), threads=2).run_with_regions(prep.gallery_pixels)
        if float(np.abs(whole - gallery).max()) > 1e-3:
            raise ValueError(f"{path}: its whole-image embedding is not encoder/{args.version}'s")
        variants[name] = (1, regions)
        variants[f"{name} + centre quarter encoded"] = (2, np.concatenate([regions[:, others], centre], axis=1))
    rows = []
    for name, (cost, regions) in variants.items():
        copy = copy_detection(prep, gallery, queries, regions)
        verified = copy_detection(prep, gallery, queries, regions, verify=True)
        category = category_retrieval(prep, gallery, {"off": 2.0}, regions)
        edits = [e for e in copy if e not in ("crop-50", "centre-crop-box")]
        rows.append({"variant": name, "encoder_inputs_per_image": round(cost, 2),
                     "crop50_p1": copy["crop-50"]["p@1"], "crop_box_centre_p1": copy["centre-crop-box"]["p@1"],
                     "other_edits_mean_p1": round(float(np.mean([copy[e]["p@1"] for e in edits])), 4),
                     "crop50_p1_verified": verified["crop-50"]["p@1"],
                     "crop_box_centre_p1_verified": verified["centre-crop-box"]["p@1"],
                     "worst_edit_p1_verified": min(v["p@1"] for v in verified.values()),
                     "tuxpaint_map10": category["tuxpaint"]["map@10"], "emoji_map10": category["emoji"]["map@10"],
                     "copy": copy, "copy_verified": verified})
    columns = ["variant", "encoder_inputs_per_image", "crop50_p1", "crop_box_centre_p1", "other_edits_mean_p1",
               "crop50_p1_verified", "crop_box_centre_p1_verified", "worst_edit_p1_verified", "tuxpaint_map10",
               "emoji_map10"]
    info = run_info(version=args.version, seed=args.seed, gallery=len(gallery), copy_queries=len(queries),
                    seconds=round(time.monotonic() - started, 1))
    markdown = (
        "# Regions: how they are made against what they cost\n\n"
        f"Command: `python -m evaluation.region_variants --version {args.version}"
        + "".join(f' --graph "{spec}"' for spec in args.graph) + (" --only-graphs" if args.only_graphs else "")
        + f"` (encoder/{args.version}; held-out "
        f"gallery of {len(gallery)} images, {len(queries)} copy queries; scored as the stores score, "
        "server/core/regions.py). Cost: encoder inputs per indexed image, in 224-px passes.\n\n"
        + markdown_table(rows, columns) + "\n\n"
        "Variants: `encoded` = each box cropped and encoded (at 224 px unless `@S`); `pooled@S` = the boxes "
        "average-pooled from one pass over the whole image at S px; `centre quarter encoded` = that box encoded, "
        "the others pooled or absent; a `--graph` variant: that graph's own regions output (a learned head: "
        "training/region_head.py, `make region-head`). `*_verified`: with the served search's copy verification "
        "(server/query/verification.py; rule 5 finds a crop's source by its thumbnail whatever the regions). What "
        "the numbers mean for the design: docs/QUALITY.md, 'Regions'.\n")
    write_results("region_variants", {"run": info, "rows": rows}, markdown)
    return {"rows": rows}


if __name__ == "__main__":
    main()
