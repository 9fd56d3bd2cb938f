"""How the embedding field of a Milvus collection is indexed and searched (CPU and GPU index kinds)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from server.store.milvus.client import SEGMENT_BYTES

IVF_KINDS = ("IVF_PQ", "GPU_IVF_PQ", "IVF_FLAT", "IVF_SQ8")


@dataclass(frozen=True)
class MilvusIndexConfig:
    """Index of the embedding field and how it is searched.

    kind: IVF_SQ8 (CPU default), HNSW, IVF_PQ, IVF_FLAT, FLAT; GPU_IVF_PQ / GPU_CAGRA for query nodes with GPUs (Milvus
    GPU image; same parameters as IVF_PQ, resp. graph degrees + itopk). Milvus builds the index per sealed
    segment (~512 MB of rows), so `for_corpus` sizes nlist from the rows of one segment, not the corpus.
    """

    kind: str = "IVF_SQ8"
    nlist: int = 1024
    nprobe: int = 64
    m: int = 0  # PQ sub-quantizers; 0: dim // 8 (8 dimensions per byte-sized code)
    nbits: int = 8
    hnsw_m: int = 16
    ef_construction: int = 200
    ef: int = 128
    graph_degree: int = 32  # GPU_CAGRA
    intermediate_graph_degree: int = 64
    itopk_size: int = 128
    refine_factor: int = 0  # candidates fetched per wanted result, re-scored exactly; 0: 8 for PQ kinds, else 1
    exact_fallback_max: int = 100_000  # largest eligible set answered by an exact scan when the ANN falls short

    @property
    def candidates_per_result(self) -> int:
        """PQ distances are coarse: fetch 8x and re-score; SQ8's are close (recall@10 0.99 against exact at 100k
        rows without a re-score), HNSW/IVF_FLAT/FLAT distances exact."""
        return self.refine_factor or (8 if "PQ" in self.kind else 1)

    @classmethod
    def for_corpus(cls, n: int, dim: int, kind: str = "IVF_SQ8") -> MilvusIndexConfig:
        """IVF kinds like the FAISS default: nlist ~ 4 sqrt(rows of a segment), nprobe = nlist / 16.

        The default kind is IVF_SQ8 on measurement (benchmarks/results/milvus_parity.md, 1M real-structure 1280-d
        rows, sealed segments memory-mapped): 300 B of the server's heap per vector against HNSW's 7.1 KB (its graph
        holds the floats), recall@10 0.992 against exact search at 10% and at 1% eligible against HNSW's 0.891, no
        quality gap to FAISS mode on the held-out set. IVF_PQ trains too slowly on Milvus 2.3 (188-382 s per 20k
        rows here, benchmarks/results/milvus_index_choice.md) for codes 8x smaller than SQ8's."""
        rows = max(1, min(n, SEGMENT_BYTES // (4 * dim + 64)))
        nlist = int(2 ** round(math.log2(max(16.0, 4 * math.sqrt(rows)))))
        nlist = max(16, min(nlist, 65536, max(16, rows // 39)))  # k-means wants >= 39 points per list
        return cls(kind=kind, nlist=nlist, nprobe=max(8, nlist // 16))

    def pq_m(self, dim: int) -> int:
        want = self.m or max(1, dim // 8)
        return max(d for d in range(1, want + 1) if dim % d == 0)

    def index_params(self, dim: int) -> dict[str, Any]:
        """`create_index` arguments for the embedding field (metric IP: the embeddings are unit vectors)."""
        params: dict[str, Any]
        if self.kind in ("IVF_PQ", "GPU_IVF_PQ"):
            params = {"nlist": self.nlist, "m": self.pq_m(dim), "nbits": self.nbits}
        elif self.kind in ("IVF_FLAT", "IVF_SQ8"):
            params = {"nlist": self.nlist}
        elif self.kind == "HNSW":
            params = {"M": self.hnsw_m, "efConstruction": self.ef_construction}
        elif self.kind == "GPU_CAGRA":
            params = {"intermediate_graph_degree": self.intermediate_graph_degree, "graph_degree": self.graph_degree}
        elif self.kind == "FLAT":
            params = {}
        else:
            raise ValueError(f"unknown Milvus index kind {self.kind!r}")
        return {"index_type": self.kind, "metric_type": "IP", "params": params}

    def search_params(self, widen: int, limit: int) -> dict[str, Any]:
        """Search parameters at `widen` times the configured breadth."""
        if self.kind in IVF_KINDS:
            params: dict[str, Any] = {"nprobe": min(self.nlist, self.nprobe * widen)}
        elif self.kind == "HNSW":
            params = {"ef": min(32768, max(4 * limit, self.ef * widen))}  # filtered graph walks need ef >> k
        elif self.kind == "GPU_CAGRA":
            params = {"itopk_size": max(limit, min(1024, self.itopk_size * widen))}
        else:
            params = {}
        return {"metric_type": "IP", "params": params}

    def exhausted(self, widen: int, limit: int) -> bool:
        """Would widening further change nothing (every list probed, or the graph search at its cap)?"""
        if self.kind in IVF_KINDS:
            return self.nprobe * widen >= self.nlist
        if self.kind == "HNSW":
            return self.ef * widen >= 32768
        if self.kind == "GPU_CAGRA":
            return self.itopk_size * widen >= 1024
        return True
