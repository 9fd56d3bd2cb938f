"""Which FAISS index a corpus of n vectors gets, and with which search parameters.

Below `flat_threshold` vectors the index is exact (`Flat`). Above it, the index is COMPACT: RAM holds only
4-bit fast-scan PQ codes (10 dimensions per code: 64 B per 1280-d vector), the ids and the IVF lists (found by
an HNSW graph over the centroids); the exact re-rank reads the candidates' rows from the catalog's vector log on
disk (`VectorIndex.search`). About 72 B of RAM per vector instead of 5.7 KB (`RFlat`) or 1.7 KB (`Refine(SQ8)`):
benchmarks/results/economics.md.

Indexes without an on-disk copy of their rows keep the exact copies in RAM (`RFlat`). Snapshots of the earlier
layouts (`RFlat`, `Refine(SQ8)`, a flat coarse quantizer) load and serve with their own parameters until the
background rebuild has converted them (`IndexParams.layout`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss

from server.core.config import FLAT_THRESHOLD

# Above: ~sqrt(n) lists, not ~4 sqrt(n): k-means of the coarse quantizer on 2 cores must finish.
LARGE_THRESHOLD = 2_000_000
NPROBE = 24  # lists probed (of <= 4096 below the large threshold); a restrictive filter widens it per query
# Lists probed and re-rank depth of the compact layout. Set on REAL embeddings (benchmarks/results/real_recall.md:
# ~72k whole-image and region rows of package images, queries from images left out): their neighbours spread over
# more lists than generated vectors' do, so recall is lost in the coarse quantizer, not in the codes. With 4096
# lists (what 1M-10M rows get) 16 probes gave 10-recall@10 0.951 (generated twin: 0.996), 48 give 0.987, 64
# give 0.991; a deeper re-rank (80x) or a wider HNSW search over the centroids changed nothing.
# Served until the index has measured its own depth on its corpus (search_tuning.py), and the re-rank depth the
# measurement starts from.
COMPACT_NPROBE, COMPACT_K_FACTOR = 48, 40
# The re-rank does not read all k x k_factor candidates. It reads the best RERANK_HEAD by code, measures the codes'
# error on them (exact minus code score), and then reads a later candidate only when its code score plus the mean
# error plus RERANK_SIGMAS standard deviations could still beat the k-th exact score read so far (rerank.py).
# Approximate: a candidate whose code error is an outlier is not read, and the head's errors are biased (the best
# by code are the candidates the codes overrated). Measured with 48 probes (docs/economics.md, 'Reading fewer
# rows'), rows read per query and 10-recall@10, all candidates -> 4 sigmas:
#   72k real rows, k = 10: 400 -> 133 rows, 0.993 -> 0.992; k = 30 (the gateway's first fetch): 1,200 -> 353, 0.993.
#   10M generated rows (dense families: the top 10 within 0.016 of cosine), k = 10: 400 -> 369, 0.976 -> 0.974;
#   k = 30: 1,200 -> 811, 0.997 -> 0.996.
# 3 sigmas read 84 real rows at k = 10 for 0.990 but fell to 0.942 at 10M; an unbiased error sample (a strided or
# random part of the tail) kept recall but saved under 15%.
RERANK_HEAD, RERANK_SIGMAS = 64, 4.0
# A search told that scores under a floor are discarded (the region rows: only a region scoring above the k-th
# whole-image match can change the top k) also skips the candidates whose code score plus the mean error plus
# FLOOR_SIGMAS deviations cannot reach it. Measured (12k embedding-like vectors, floor = the 10th of 60 results,
# 300 queries): 4 sigmas missed a result above the floor for 1.7% of the queries at 128-d and 3% at 1280-d; 6
# sigmas for 0% and 3% (~100-120 rows read instead of 2,400).
FLOOR_SIGMAS = 6.0
COMPACT_DIMS_PER_CODE = 5  # 1280-d: 256 sub-quantizers of 4 bits, 128 B per vector


@dataclass(frozen=True)
class IndexParams:
    factory: str
    nprobe: int = 0
    k_factor: int = 0
    ef_search: int = 0  # centroids an HNSW coarse quantizer's graph search explores (0: 2 x nprobe)
    # Compact layout: how far a later candidate's code may be off and still be read (rerank.py); None: read all.
    rerank_sigmas: float | None = RERANK_SIGMAS

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
    def layout(self) -> str:
        """Where the re-rank reads its vectors: `flat` (no re-rank), `exact-copy` (float copies in RAM, RFlat),
        `sq8-copy` (8-bit copies in RAM) or `compact` (the vector log on disk; RAM holds codes only)."""
        if self.is_flat:
            return "flat"
        if self.factory.endswith("RFlat"):
            return "exact-copy"
        return "sq8-copy" if self.factory.endswith("Refine(SQ8)") else "compact"

    @property
    def exact_rerank(self) -> bool:
        """The index holds the exact vectors (Flat, RFlat)."""
        return self.layout in ("flat", "exact-copy")

    @property
    def rerank_from_disk(self) -> bool:
        return self.layout == "compact"


def nlist_for(n: int) -> int:
    """~4*sqrt(n) lists (nearest power of two) keeping >= 39 training points per list as FAISS recommends;
    ~sqrt(n) past the large threshold."""
    if n >= LARGE_THRESHOLD:
        return 2 ** round(math.log2(math.sqrt(n)))
    return 2 ** round(math.log2(max(64, min(4 * math.sqrt(n), n / 39))))


def params_for(n: int, dim: int, flat_threshold: int = FLAT_THRESHOLD, rows_on_disk: bool = True) -> IndexParams:
    """Index type and search parameters for a corpus of n vectors (`rows_on_disk`: the re-rank can read them
    from the catalog's vector log)."""
    if n < flat_threshold:
        return IndexParams("Flat")
    if rows_on_disk:
        return compact_params(nlist_for(n), dim)
    return ivf_params(nlist_for(n), m=dim)


def compact_params(nlist: int, dim: int, m: int | None = None) -> IndexParams:
    """4-bit fast-scan PQ of the raw embedding, 40x candidates re-ranked exactly from disk. On 200k generated
    vectors (evaluation/real_structure.py) a PCA or random rotation first ranked worse and costs a 1280x1280
    product per vector. benchmarks/results/economics.md has the 10M measurement, real_recall.md the real one."""
    # Small dimensions (tests, other encoders) keep at least 32 sub-quantizers: a few codes cannot rank at all.
    target = max(dim // COMPACT_DIMS_PER_CODE, min(dim, 32))
    m = m or max(d for d in range(1, target + 1) if dim % d == 0)
    return IndexParams(f"IVF{nlist}_HNSW32,PQ{m}x4fs", nprobe=COMPACT_NPROBE, k_factor=COMPACT_K_FACTOR)


def ivf_params(nlist: int, m: int) -> IndexParams:
    """Exact float copies in RAM for the re-rank: for an index without an on-disk copy of its rows. On 1M x 1280,
    one thread: 10-recall@10 ~0.97 in < 2% of exact search time (benchmarks/results/index_1000000.md)."""
    return IndexParams(f"IVF{nlist}_HNSW32,PQ{m}x4fs,RFlat", nprobe=NPROBE, k_factor=8)


def flat_quantizer_params(nlist: int, m: int) -> IndexParams:
    """Snapshots written before the HNSW coarse quantizer: a scan of all centroids, a 32x re-rank."""
    return IndexParams(f"IVF{nlist},PQ{m}x4fs,RFlat", nprobe=max(16, nlist // 16), k_factor=32)


def large_params(nlist: int, m: int) -> IndexParams:
    """Snapshots of the earlier large-corpus layout: an SQ8 re-rank of 32x the candidates."""
    return IndexParams(f"IVF{nlist}_HNSW32,PQ{m}x4fs,Refine(SQ8)", nprobe=max(16, nlist // 32), k_factor=32)


def params_of(index: faiss.Index) -> IndexParams:
    """The parameters of a loaded index (its factory string is not stored)."""
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexFlat):
        return IndexParams("Flat")
    ivf = faiss.extract_index_ivf(index)
    if not isinstance(index, faiss.IndexRefine):
        return compact_params(ivf.nlist, index.d, faiss.downcast_index(ivf).pq.M)
    nlist, m = ivf.nlist, faiss.downcast_index(index.base_index).pq.M
    if isinstance(faiss.downcast_index(index.refine_index), faiss.IndexScalarQuantizer):
        return large_params(nlist, m)
    hnsw = isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexHNSW)
    return ivf_params(nlist, m) if hnsw else flat_quantizer_params(nlist, m)
