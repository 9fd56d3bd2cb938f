"""Which FAISS index a corpus of n vectors gets, and with which search parameters.

Below `flat_threshold` vectors the index is exact (`Flat`); above it, IVF whose lists are found by an HNSW
graph over the centroids, 4-bit fast-scan PQ with one dimension per sub-quantizer, and an exact re-rank on the
stored vectors (`RFlat`); past `large_threshold` the re-rank reads 8-bit codes instead of exact copies
(benchmarks/results/index_1000000.md and scale.md have the measurements behind the rules).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss

FLAT_THRESHOLD = 20_000  # below: exact search costs < ~3 ms and IVF training has too few points
# Above: an exact float copy for the re-rank (5 KB per 1280-d vector) no longer fits in memory; re-rank on
# 8-bit scalar-quantized copies and assign lists with an HNSW graph (benchmarks/results/scale.md: 10M vectors
# in 15.75 GiB at 10-recall@10 0.9875, 12 ms per query).
LARGE_THRESHOLD = 2_000_000
NPROBE = 24  # lists probed (of <= 4096 below the large threshold); a restrictive filter widens it per query


@dataclass(frozen=True)
class IndexParams:
    factory: str
    nprobe: int = 0
    k_factor: int = 0
    ef_search: int = 0  # centroids an HNSW coarse quantizer's graph search explores (0: 2 x nprobe)

    @property
    def hnsw_quantizer(self) -> bool:
        return "_HNSW" in self.factory

    def quantizer_ef(self, nprobe: int) -> int:
        """Centroids the HNSW coarse quantizer explores when probing nprobe lists: never fewer than 2 x nprobe."""
        return max(self.ef_search, 2 * nprobe)

    @property
    def is_flat(self) -> bool:
        return self.nprobe == 0

    @property
    def exact_rerank(self) -> bool:
        """Flat, or IVF-PQ re-ranked on exact float copies (RFlat): the index holds the exact vectors."""
        return self.is_flat or self.factory.endswith("RFlat")


def params_for(n: int, dim: int, flat_threshold: int = FLAT_THRESHOLD,
               large_threshold: int = LARGE_THRESHOLD) -> IndexParams:
    """Index type and search parameters for a corpus of n vectors."""
    if n < flat_threshold:
        return IndexParams("Flat")
    if n >= large_threshold:
        return large_params(2 ** round(math.log2(math.sqrt(n))), m=dim // 2)
    # ~4*sqrt(n) lists (nearest power of two), keeping >= 39 training points per list as FAISS recommends.
    nlist = 2 ** round(math.log2(max(64, min(4 * math.sqrt(n), n / 39))))
    return ivf_params(nlist, m=dim)


def ivf_params(nlist: int, m: int) -> IndexParams:
    """On 1M x 1280, one thread, one query at a time: 10-recall@10 ~0.97 in < 2% of exact search time
    (benchmarks/results/index_1000000.md). The HNSW graph over the centroids replaces a scan of all of them; one
    dimension per 4-bit sub-quantizer ranks well enough that an 8x exact re-rank suffices (2 dims per
    sub-quantizer needed 24-32x on the hard set, 4 dims never reached 0.95); 24 lists of 4096 (the graph exploring
    48 centroids) reach 0.97 on the smooth set, where neighbours spread over many lists."""
    return IndexParams(f"IVF{nlist}_HNSW32,PQ{m}x4fs,RFlat", nprobe=NPROBE, k_factor=8)


def flat_quantizer_params(nlist: int, m: int) -> IndexParams:
    """Snapshots written before the HNSW coarse quantizer: a scan of all centroids, a 32x re-rank."""
    return IndexParams(f"IVF{nlist},PQ{m}x4fs,RFlat", nprobe=max(16, nlist // 16), k_factor=32)


def large_params(nlist: int, m: int) -> IndexParams:
    """~sqrt(n) lists (k-means on 2 cores must finish), nprobe nlist/32, SQ8 re-rank of 32x the candidates."""
    return IndexParams(f"IVF{nlist}_HNSW32,PQ{m}x4fs,Refine(SQ8)", nprobe=max(16, nlist // 32), k_factor=32)


def params_of(index: faiss.Index) -> IndexParams:
    """The parameters of a loaded index (its factory string is not stored)."""
    if isinstance(faiss.downcast_index(index), faiss.IndexFlat):
        return IndexParams("Flat")
    ivf = faiss.extract_index_ivf(index)
    nlist, m = ivf.nlist, faiss.downcast_index(index.base_index).pq.M
    if isinstance(faiss.downcast_index(index.refine_index), faiss.IndexScalarQuantizer):
        return large_params(nlist, m)
    hnsw = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
    return ivf_params(nlist, m) if hnsw else flat_quantizer_params(nlist, m)
