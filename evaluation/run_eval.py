"""Offline ranking metrics of encoder versions through the real encoder (Triton) and the real index.

    python -m evaluation.run_eval [--versions 1 2] [--set builtin | DIR] [--triton-url HOST:PORT]
                                  [--model-repository DIR] [--filler 20000] [--k 10] [--json OUT]

For each version: the set's corpus and queries are embedded by Triton (that version, pinned), then ranked
(a) by exact search and (b) by the IVF-PQ index the gateway serves at the size of corpus + `filler` generated
vectors (never relevant), so the cost of the approximation is visible next to the model's own quality.
Without --triton-url an embedded Triton is started on free ports and stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from evaluation.dataset import EvalSet, builtin_set
from evaluation.metrics import evaluate
from evaluation.vectors import synthetic_dataset
from reporting.results import markdown_table
from server.core.config import MODEL_REPOSITORY, Settings, loopback_settings
from server.embedding.contract import EMBEDDING_DIM
from server.embedding.embedder import Embedded, ImageInput, LocalDecodeEmbedder
from server.embedding.encoder import EncoderClient
from server.embedding.imaging import CropBox, Limits
from server.store.faiss.index import VectorIndex

KS = (1, 5, 10)
COLUMNS = ["version", "index", "mrr", "recall@1", "recall@10", "precision@10", "map@10", "ndcg@1", "ndcg@5",
           "ndcg@10"]


@contextmanager
def triton_url(url: str | None, model_repository: Path = MODEL_REPOSITORY) -> Iterator[tuple[str, str | None]]:
    """The given Triton (its key from VSEARCH_TRITON_ADMIN_KEY, if it restricts inference), or an embedded one for
    the duration: (gRPC URL, key)."""
    if url:
        yield url, Settings.from_env().triton_admin_key
        return
    from server.triton.supervisor import TritonServer

    with TritonServer(loopback_settings(model_repository=model_repository)) as triton:
        yield triton.endpoint.grpc_url, triton.settings.triton_admin_key


async def _embed(triton: tuple[str, str | None], version: str,
                 items: list[tuple[bytes, tuple[float, float, float, float] | None]], desc: str) -> np.ndarray:
    url, key = triton
    embedder = LocalDecodeEmbedder(EncoderClient(url, version=version, key=key), Limits(max_pixels=10**9))
    inputs = [ImageInput(data, CropBox(*crop) if crop else None) for data, crop in items]
    try:
        with tqdm(total=len(items), desc=desc, unit="img") as bar:
            outcomes = await embedder.embed(inputs, timeout_s=120, progress=bar.update)
    finally:
        await embedder.close()
    rejected = [str(v) for v in outcomes if not isinstance(v, Embedded)]
    if rejected:
        raise RuntimeError(f"{len(rejected)} evaluation images rejected, e.g. {rejected[0]}")
    return np.stack([v.vector for v in outcomes])  # type: ignore[union-attr]


def rank(vectors: np.ndarray, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Top-k positions by exact search and by the index the gateway would serve over the same vectors."""
    exact = faiss.IndexFlatIP(EMBEDDING_DIM)
    exact.add(vectors)
    served = VectorIndex(EMBEDDING_DIM, rebuild_in_background=False)
    served.add(0, vectors)
    return exact.search(query_vectors, k)[1], served.search(query_vectors, k)[1], served.describe()[0]


def run(eval_set: EvalSet, versions: list[str], triton: tuple[str, str | None], k: int = 10, filler: int = 20_000
        ) -> list[dict[str, object]]:
    ids = list(eval_set.corpus)
    relevances = [q.relevance for q in eval_set.queries]
    filler_vectors = synthetic_dataset(filler, 1)[0] if filler else None
    rows = []
    for version in versions:
        corpus_vectors = asyncio.run(_embed(triton, version, [(eval_set.corpus[i], None) for i in ids],
                                            f"v{version} corpus"))
        query_vectors = asyncio.run(_embed(triton, version, [(q.image, q.crop) for q in eval_set.queries],
                                           f"v{version} queries"))
        everything = corpus_vectors if filler_vectors is None else np.concatenate([corpus_vectors, filler_vectors])
        exact, served, served_type = rank(everything, query_vectors, k)
        # Filler vectors stay in the rankings as irrelevant results: they are distractors, not gaps.
        names = ids + [f"filler/{i}" for i in range(len(everything) - len(ids))]
        for kind, ranked in (("exact (Flat)", exact), (f"served ({served_type})", served)):
            metrics = evaluate([[names[i] for i in row if i >= 0] for row in ranked], relevances, KS)
            rows.append({"version": version, "index": kind, **{m: round(v, 4) for m, v in metrics.items()}})
    return rows


def load_set(name: str, sources: int) -> EvalSet:
    return builtin_set(sources) if name == "builtin" else EvalSet.load(Path(name))


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--versions", nargs="+", default=["1"])
    parser.add_argument("--set", default="builtin", help="'builtin' or a directory saved by EvalSet.save")
    parser.add_argument("--sources", type=int, default=40, help="source photos of the built-in set")
    parser.add_argument("--triton-url", default=None)
    parser.add_argument("--model-repository", type=Path, default=MODEL_REPOSITORY)
    parser.add_argument("--filler", type=int, default=20_000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    eval_set = load_set(args.set, args.sources)
    print(f"{len(eval_set.queries)} queries over {len(eval_set.corpus)} images (+{args.filler} filler vectors)")
    with triton_url(args.triton_url, args.model_repository) as triton:
        rows = run(eval_set, args.versions, triton, args.k, args.filler)
    print(markdown_table(rows, COLUMNS))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
