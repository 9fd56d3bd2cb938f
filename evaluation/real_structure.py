"""Vectors with the structure of this encoder's real embeddings, at any count (index benchmarks at 10M+).

Compact codes behave very differently on isotropic random vectors than on real embeddings (shared/README.md), and
no package ships millions of images. So a generative model is fitted to real embeddings of package images and
sampled:

- **Fit data**: the served encoder's whole-image AND region embeddings (the rows the store indexes) of the
  `train` split of the labelled package images (Tux Paint stamps, Noto emoji; evaluation/quality_sets.py). The
  quality sets (`calib` + `test`) are never used, so a codec trained on generated vectors has seen nothing of them.
- **Model**: k-means (`clusters`) over the fit rows; every generated vector is a real fit row (the anchor, drawn
  uniformly) plus a within-cluster deviation drawn from a Gaussian with the residuals' covariance (top `rank`
  principal directions with their variances, plus the remaining variance spread evenly over the other
  dimensions), then L2-normalised. So the set keeps the real anisotropic spectrum, the cluster structure and the
  dense families of near neighbours that make ranking hard, at any n.
- **Check**: `describe` reports what a reader needs to trust the set: spectrum, the nearest-neighbour similarity
  profile and the exact top-10 margin, for the real rows and for a generated sample of the same size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from server.embedding.imaging import prepare_views, region_views

CACHE = Path(__file__).resolve().parents[1] / "var" / "real-structure"


def train_split_rows(version: str = "2", seed: int = 16) -> np.ndarray:
    """float32 [images * (1 + R), dim]: whole-image and region embeddings of the train split, as the store holds
    them (cached per version under var/real-structure)."""
    from evaluation.edits import encode
    from evaluation.quality import VersionEmbedder
    from evaluation.quality_sets import labelled_images, of_split

    path = CACHE / f"train-rows-v{version}-s{seed}.npy"
    if path.exists():
        return np.load(path)
    images = of_split(labelled_images(), {"train"}, seed)
    views = np.stack([v for item in tqdm(images, desc="decode train split", unit="img")
                      for v in prepare_views(encode(item.load()), region_views(None))])
    rows = VersionEmbedder(version).embed(views, "embed train split").astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, rows)
    return rows


@dataclass
class RealStructure:
    anchors: np.ndarray  # [n, dim] real rows
    basis: np.ndarray  # [rank, dim] principal directions of the within-cluster residuals
    scales: np.ndarray  # [rank] their standard deviations
    tail: float  # standard deviation per dimension of what the basis does not explain

    @classmethod
    def fit(cls, rows: np.ndarray, clusters: int = 256, rank: int = 256, seed: int = 0) -> RealStructure:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        kmeans = faiss.Kmeans(rows.shape[1], clusters, niter=20, seed=seed, spherical=True, verbose=False)
        kmeans.train(rows)
        _, assign = kmeans.index.search(rows, 1)
        residuals = rows - kmeans.centroids[assign[:, 0]]
        _, singular, vt = np.linalg.svd(residuals, full_matrices=False)
        variances = singular**2 / len(rows)
        tail_variance = variances[rank:].sum() / max(1, rows.shape[1] - rank)
        return cls(rows, vt[:rank].astype(np.float32), np.sqrt(variances[:rank]).astype(np.float32),
                   float(np.sqrt(tail_variance)))

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        anchors = self.anchors[rng.integers(0, len(self.anchors), n)]
        z = rng.standard_normal((n, len(self.scales)), dtype=np.float32) * self.scales
        out = anchors + z @ self.basis + self.tail * rng.standard_normal(anchors.shape, dtype=np.float32)
        faiss.normalize_L2(out)
        return out

    def chunks(self, n: int, seed: int, chunk: int = 100_000) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(seed)
        for start in range(0, n, chunk):
            yield self.sample(min(chunk, n - start), rng)


def write_rows(path: Path, n: int, model: RealStructure, seed: int,
               progress: Callable[[int], None] | None = None) -> np.ndarray:
    """n generated rows as a file laid out like the store's vector log (row i = id i; `.f16`: float16 as the store
    keeps them, `.f32`: float32); reused when a complete file of n rows exists. Returns it memory-mapped."""
    dim, dtype = model.anchors.shape[1], np.dtype("<f2" if path.suffix == ".f16" else "<f4")
    if not (path.exists() and path.stat().st_size == n * dim * dtype.itemsize):
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for block in model.chunks(n, seed):
                f.write(block.astype(dtype).tobytes())
                if progress is not None:
                    progress(len(block))
        tmp.rename(path)
    return np.memmap(path, dtype=dtype, mode="r", shape=(n, dim))


def describe(rows: np.ndarray, k: int = 10) -> dict[str, float]:
    """Spectrum and neighbourhood statistics of a set of unit rows (every row a query over the others)."""
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    centred = rows - rows.mean(0)
    variances = np.linalg.svd(centred, compute_uv=False) ** 2
    share = np.cumsum(variances) / variances.sum()
    index = faiss.IndexFlatIP(rows.shape[1])
    index.add(rows)
    scores, _ = index.search(rows, k + 1)
    scores = scores[:, 1:]  # not itself
    return {"rows": len(rows),
            "dims_for_50pct_variance": int(np.searchsorted(share, 0.5) + 1),
            "dims_for_90pct_variance": int(np.searchsorted(share, 0.9) + 1),
            "nn1_similarity_mean": round(float(scores[:, 0].mean()), 4),
            "nn10_similarity_mean": round(float(scores[:, -1].mean()), 4),
            "top10_margin_mean": round(float((scores[:, 0] - scores[:, -1]).mean()), 4),
            "mean_pair_similarity": round(float((rows[:2000] @ rows[:2000].T).mean()), 4)}
