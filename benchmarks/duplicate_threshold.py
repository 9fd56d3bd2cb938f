"""Choose the near-duplicate cosine threshold on real duplicate pairs.

Positives: the same wallpaper shipped at several resolutions (Debian's plasma-workspace-wallpapers ships
each picture as <name>/contents/images/<WxH>.* plus a screenshot), and re-encoded/resized copies of every
corpus photo (JPEG q50 at half size). Negatives: all pairs of different pictures.
The threshold sits between the hardest positive we want to collapse and the closest different pictures.

    python -m benchmarks.duplicate_threshold
"""

from __future__ import annotations

import io
import itertools

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from devkit.corpus import picture_key, real_photos
from reporting.results import RESULTS, markdown_table, run_info, write_results
from server.embedding import imaging
from server.embedding.onnx_encoder import OnnxEncoder


def main() -> None:
    encoder = OnnxEncoder.of_version(1)
    photos = real_photos()
    originals, copies = [], []
    for p in photos:
        image = Image.open(p.path).convert("RGB")
        originals.append(imaging.to_model_input(image))
        buffer = io.BytesIO()
        image.resize((max(1, image.width // 2), max(1, image.height // 2))).save(buffer, "JPEG", quality=50)
        copies.append(imaging.prepare(buffer.getvalue()))
    e, c = encoder.run(np.stack(originals), batch=16), encoder.run(np.stack(copies), batch=16)
    keys = [picture_key(p.image_id) for p in photos]
    same_picture, different = [], []
    for i, j in itertools.combinations(range(len(photos)), 2):
        (same_picture if keys[i] == keys[j] else different).append(float(e[i] @ e[j]))
    reencoded = [float(a @ b) for a, b in zip(e, c, strict=True)]
    different_arr = np.array(different)
    stats = {
        "reencoded_copy": {"n": len(reencoded), "min": min(reencoded), "p5": float(np.percentile(reencoded, 5))},
        "same_picture_other_resolution": {"n": len(same_picture), "min": min(same_picture),
                                          "p5": float(np.percentile(same_picture, 5))},
        "different_pictures": {"n": len(different), "max": float(different_arr.max()),
                               "p99.9": float(np.percentile(different_arr, 99.9))},
    }
    # Midway between the closest different pictures and the 5th percentile of re-encoded copies.
    threshold = round((stats["different_pictures"]["max"] + stats["reencoded_copy"]["p5"]) / 2, 2)
    stats["chosen_threshold"] = threshold
    stats["copies_collapsed"] = float(np.mean(np.array(reencoded) > threshold))
    stats["same_picture_pairs_collapsed"] = float(np.mean(np.array(same_picture) > threshold))
    stats["different_pairs_collapsed"] = float(np.mean(different_arr > threshold))

    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.linspace(-0.2, 1.0, 121)
    ax.hist(different, bins=bins, alpha=0.6, label=f"different pictures ({len(different)} pairs)", density=True)
    ax.hist(same_picture, bins=bins, alpha=0.6, label=f"same picture, other resolution ({len(same_picture)})",
            density=True)
    ax.hist(reencoded, bins=bins, alpha=0.6, label=f"half-size JPEG q50 copy ({len(reencoded)})", density=True)
    ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold}")
    ax.set_xlabel("cosine similarity")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title("Near-duplicate threshold on real images (EfficientNet-Lite0 embeddings)")
    fig.tight_layout()
    fig.savefig(RESULTS / "duplicate_threshold.png", dpi=110)
    rows = [{"set": k, **{m: v for m, v in s.items()}} for k, s in stats.items() if isinstance(s, dict)]
    md = ["# Near-duplicate threshold", "", "`python -m benchmarks.duplicate_threshold`", "",
          markdown_table(rows, ["set", "n", "min", "p5", "max", "p99.9"]), "",
          f"Chosen threshold: **{threshold}** — collapses {stats['copies_collapsed']:.0%} of re-encoded copies, "
          f"{stats['same_picture_pairs_collapsed']:.0%} of same-picture pairs, "
          f"{stats['different_pairs_collapsed']:.2%} of different-picture pairs.", "",
          "![histogram](duplicate_threshold.png)"]
    write_results("duplicate_threshold", {**run_info(corpus=len(photos)), "stats": stats}, "\n".join(md))
    print(stats)


if __name__ == "__main__":
    main()
