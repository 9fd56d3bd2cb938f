"""The held-out quality set searched through a real store, scored the way `make quality` scores it.

Shared by benchmarks/economics.py (compact FAISS indexes against exact search) and benchmarks/milvus_parity.py
(Milvus mode against FAISS mode): the gallery of evaluation/quality.py (calib + test splits, never trained on)
indexed with its region embeddings; every copy edit and the centre crop box queried once (P@1), and every
gallery image of a category with >= 3 members queried with itself excluded (category mAP@10, leave-one-out).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from evaluation.metrics import evaluate
from evaluation.quality import Prepared, VersionEmbedder, build
from server.store.base import Candidate, EmbeddedImage, Visibility

Search = Callable[[np.ndarray, int, str | None], list[Candidate]]


@dataclass(frozen=True)
class HeldOut:
    prep: Prepared
    gallery: np.ndarray  # [G, dim] whole-image embeddings
    regions: np.ndarray  # [G, R, dim] region embeddings (server/core/regions.py)
    queries: np.ndarray  # [Q, dim] the copy queries (prep.copy_queries: source, edit)
    members: list[int]  # gallery images that query their category

    def images(self) -> list[EmbeddedImage]:
        """The gallery as a store indexes it: ID = gallery position, every image public."""
        return [EmbeddedImage(str(i), "owner", Visibility.PUBLIC, f"h{i}", g, r)
                for i, (g, r) in enumerate(zip(self.gallery, self.regions, strict=True))]


def held_out(version: str, seed: int = 16) -> HeldOut:
    prep = build(seed, regions=True)
    embedder = VersionEmbedder(version)
    gallery = embedder.embed(prep.gallery_pixels, "gallery")
    regions = embedder.regions(prep.gallery_pixels, prep.region_pixels, "regions")
    queries = embedder.embed(prep.copy_pixels, "copies")
    counts = Counter(g.category for g in prep.gallery)
    members = [i for i, g in enumerate(prep.gallery) if counts[g.category] >= 3]
    return HeldOut(prep, gallery, regions, queries, members)


def searched(held: HeldOut, search: Search, name: str, k: int = 10) -> tuple[list[list[int]], list[list[int]]]:
    """Top-k gallery positions for every copy query, and for every category query (itself excluded)."""
    copies = [[int(c.image_id) for c in search(q, k, None)] for q in tqdm(held.queries, desc=f"{name}: copies")]
    by_category = [[int(c.image_id) for c in search(held.gallery[q], k, str(q))]
                   for q in tqdm(held.members, desc=f"{name}: categories")]
    return copies, by_category


def relevant_by_category(held: HeldOut) -> list[dict[int, int]]:
    gallery = held.prep.gallery
    return [{j: 1 for j, g in enumerate(gallery) if g.category == gallery[q].category and j != q}
            for q in held.members]


def quality(held: HeldOut, copies: list[list[int]], by_category: list[list[int]]) -> dict[str, float]:
    """P@1 of every copy edit (the centre crop box included) and category mAP@10, as `make quality` names them."""
    hits: dict[str, list[float]] = {}
    for (source, edit), got in zip(held.prep.copy_queries, copies, strict=True):
        hits.setdefault(edit, []).append(float(bool(got) and got[0] == source))
    out = {f"p1_{edit}": round(float(np.mean(h)), 4) for edit, h in hits.items()}
    out["category_map10"] = round(evaluate(by_category, relevant_by_category(held), (10,))["map@10"], 4)
    return out
