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

from benchmarks.common import markdown_table
from benchmarks.index_bench import synthetic_dataset
from evaluation.dataset import EvalSet, builtin_set
from evaluation.metrics import evaluate
from server.core.config import MODEL_REPOSITORY, loopback_settings
from server.embedding.contract import EMBEDDING_DIM
from server.embedding.encoder import EncoderClient
from server.embedding.imaging import CropBox, Limits
from server.embedding.pipeline import ImageInput, embed_images
from server.store.faiss.index import VectorIndex

KS = (1, 5, 10)
COLUMNS = ["version", "index", "mrr", "recall@1", "recall@10", "precision@10", "map@10", "ndcg@1", "ndcg@5",
           "ndcg@10"]


@contextmanager
def triton_url(url: str | None, model_repository: Path = MODEL_REPOSITORY) -> Iterator[str]:
    """The given Triton, or an embedded one for the duration."""
    if url:
        yield url
        return
    from server.models.triton import TritonServer

    with TritonServer(loopback_settings(model_repository=model_repository)) as triton:
        yield triton.endpoint.grpc_url


async def _embed(url: str, version: str, items: list[tuple[bytes, tuple[float, float, float, float] | None]],
                 desc: str) -> np.ndarray:
    encoder = EncoderClient(url, version=version)
    inputs = [ImageInput(data, CropBox(*crop) if crop else None) for data, crop in items]
    try:
        with tqdm(total=len(items), desc=desc, unit="img") as bar:
            vectors = await embed_images(encoder, inputs, Limits(max_pixels=10**9), timeout_s=120, progress=bar.update,
                                         local_decode=True)
    finally:
        await encoder.close()
    rejected = [str(v) for v in vectors if not isinstance(v, np.ndarray)]
    if rejected:
        raise RuntimeError(f"{len(rejected)} evaluation images rejected, e.g. {rejected[0]}")
    return np.stack(vectors)


def rank(vectors: np.ndarray, query_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Top-k positions by exact search and by the index the gateway would serve over the same vectors."""
    exact = faiss.IndexFlatIP(EMBEDDING_DIM)
    exact.add(vectors)
    served = VectorIndex(EMBEDDING_DIM, rebuild_in_background=False)
    served.add(0, vectors)
    return exact.search(query_vectors, k)[1], served.search(query_vectors, k)[1], served.describe()[0]


def run(eval_set: EvalSet, versions: list[str], url: str, k: int = 10, filler: int = 20_000
        ) -> list[dict[str, object]]:
    ids = list(eval_set.corpus)
    relevances = [q.relevance for q in eval_set.queries]
    filler_vectors = synthetic_dataset(filler, 1)[0] if filler else None
    rows = []
    for version in versions:
        corpus_vectors = asyncio.run(_embed(url, version, [(eval_set.corpus[i], None) for i in ids],
                                            f"v{version} corpus"))
        query_vectors = asyncio.run(_embed(url, version, [(q.image, q.crop) for q in eval_set.queries],
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
    with triton_url(args.triton_url, args.model_repository) as url:
        rows = run(eval_set, args.versions, url, args.k, args.filler)
    print(markdown_table(rows, COLUMNS))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
