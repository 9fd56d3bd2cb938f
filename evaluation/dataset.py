"""Evaluation sets: queries with graded relevance over a corpus, and the built-in copy-detection set.

Format on disk (`EvalSet.save` / `EvalSet.load`), a directory with:
- `corpus.jsonl`: one line per indexed image, {"image_id": str, "file": "corpus/<n>.jpg"};
- `queries.jsonl`: one line per query, {"query_id": str, "file": "queries/<n>.jpg", "crop": [x0, y0, x1, y1]
  or null, "relevance": {image_id: grade 1..5}} — every image not listed is irrelevant (grade 0);
- the image files.

The built-in set follows copy-detection benchmarks (Copydays, DISC21) on the real corpus photos. Each of
`sources` photos, spread over the corpus, gets four edited copies of graded strength added to the corpus
(grade 4 mild: rescaled + JPEG q70; 3: 80% crop + colour shift; 2: 60% crop + 8 degree rotation + text overlay;
1: 45% crop + grayscale + blur + 20 degree rotation), and two queries: a transformed copy (its own random mix
of rescale, JPEG quality, colour change, small rotation and overlay) and a crop query (the original with a
crop box over 40-70% of it). For both, the original is graded 5, any other resolution of the same picture
(the wallpaper packages ship some pictures several times) 5, the edited copies 4..1, everything else 0:
a good ranking puts the original and the mild copies above the strong ones and above every distractor.
All randomness is seeded: the same arguments give byte-identical sets.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from devkit.corpus import picture_key, real_photos
from evaluation.edits import banner_and_box, crop_sides, encode, rotate
from server.embedding import imaging

BLACK = (0, 0, 0)
MAX_SIDE = 1024  # corpus images are stored as a platform would keep uploads: at most 1024 px, JPEG q95


@dataclass(frozen=True)
class EvalQuery:
    query_id: str
    image: bytes
    crop: tuple[float, float, float, float] | None
    relevance: dict[str, int]


@dataclass(frozen=True)
class EvalSet:
    corpus: dict[str, bytes]  # image_id -> encoded image
    queries: list[EvalQuery]

    def subset(self, max_queries: int) -> EvalSet:
        return EvalSet(self.corpus, self.queries[:max_queries])

    def save(self, directory: Path) -> None:
        (directory / "corpus").mkdir(parents=True, exist_ok=True)
        (directory / "queries").mkdir(exist_ok=True)
        corpus_lines, query_lines = [], []
        for n, (image_id, data) in enumerate(self.corpus.items()):
            (directory / f"corpus/{n}.jpg").write_bytes(data)
            corpus_lines.append(json.dumps({"image_id": image_id, "file": f"corpus/{n}.jpg"}))
        for n, q in enumerate(self.queries):
            (directory / f"queries/{n}.jpg").write_bytes(q.image)
            query_lines.append(json.dumps({"query_id": q.query_id, "file": f"queries/{n}.jpg",
                                           "crop": list(q.crop) if q.crop else None, "relevance": q.relevance}))
        (directory / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n")
        (directory / "queries.jsonl").write_text("\n".join(query_lines) + "\n")

    @classmethod
    def load(cls, directory: Path) -> EvalSet:
        corpus = {}
        for line in (directory / "corpus.jsonl").read_text().splitlines():
            row = json.loads(line)
            corpus[row["image_id"]] = (directory / row["file"]).read_bytes()
        queries = []
        for line in (directory / "queries.jsonl").read_text().splitlines():
            row = json.loads(line)
            crop = tuple(row["crop"]) if row["crop"] else None
            queries.append(EvalQuery(row["query_id"], (directory / row["file"]).read_bytes(), crop,
                                     {k: int(v) for k, v in row["relevance"].items()}))
        return cls(corpus, queries)


def edited_copies(image: Image.Image, rng: np.random.Generator) -> list[tuple[int, bytes]]:
    """(grade, bytes) of the four edited copies, mild (4) to strong (1)."""
    w, h = image.size
    mild = encode(image.resize((w // 2, h // 2)), "JPEG", quality=70)
    medium = encode(ImageEnhance.Color(crop_sides(image, 0.8, rng)).enhance(1.6), "JPEG", quality=85)
    strong = encode(banner_and_box(rotate(crop_sides(image, 0.6, rng), 8, fill=BLACK), rng), "JPEG", quality=80)
    strongest = ImageOps.grayscale(rotate(crop_sides(image, 0.45, rng), 20, fill=BLACK))
    strongest = strongest.filter(ImageFilter.GaussianBlur(2))
    return [(4, mild), (3, medium), (2, strong), (1, encode(strongest, "JPEG", quality=60))]


def transformed_query(image: Image.Image, rng: np.random.Generator) -> bytes:
    """A copy-detection query: a random mix of moderate edits."""
    scale = float(rng.uniform(0.4, 0.9))
    out = image.resize((max(1, int(image.width * scale)), max(1, int(image.height * scale))))
    if rng.random() < 0.5:
        out = ImageEnhance.Brightness(out).enhance(float(rng.uniform(0.7, 1.3)))
    if rng.random() < 0.5:
        out = ImageEnhance.Color(out).enhance(float(rng.uniform(0.5, 1.5)))
    if rng.random() < 0.4:
        out = rotate(out, float(rng.uniform(-6, 6)), fill=BLACK)
    if rng.random() < 0.4:
        out = banner_and_box(out, rng)
    return encode(out, "JPEG", quality=int(rng.integers(40, 90)))


@cache
def stored_originals() -> dict[str, bytes]:
    """The real photos as stored uploads (decoding the large wallpapers is the slow part: done once)."""
    out = {}
    for p in real_photos():
        image = imaging.decode_image(p.path.read_bytes(), imaging.Limits(max_pixels=10**9), needed=MAX_SIDE)
        image.thumbnail((MAX_SIDE, MAX_SIDE))
        out[p.image_id] = encode(image, "JPEG")
    return out


def builtin_set(sources: int = 40, seed: int = 0) -> EvalSet:
    photos = real_photos()
    rng = np.random.default_rng(seed)
    corpus = dict(stored_originals())
    groups: dict[str, list[str]] = {}
    for p in photos:
        groups.setdefault(picture_key(p.image_id), []).append(p.image_id)
    # One source per picture, spread evenly over the sorted corpus.
    pictures = sorted(groups)
    chosen = [pictures[int(i)] for i in np.linspace(0, len(pictures) - 1, min(sources, len(pictures)))]
    queries = []
    for key in chosen:
        original_id = groups[key][0]
        original = Image.open(io.BytesIO(corpus[original_id])).convert("RGB")
        relevance = {image_id: 5 for image_id in groups[key]}
        for grade, data in edited_copies(original, rng):
            copy_id = f"eval/{original_id}/edit-{grade}"
            corpus[copy_id] = data
            relevance[copy_id] = grade
        queries.append(EvalQuery(f"copy/{original_id}", transformed_query(original, rng), None, relevance))
        side = float(rng.uniform(0.4, 0.7))
        x0, y0 = (float(v) for v in rng.uniform(0, 1 - side, 2))
        queries.append(EvalQuery(f"crop/{original_id}", corpus[original_id],
                                 (round(x0, 3), round(y0, 3), round(x0 + side, 3), round(y0 + side, 3)), relevance))
    return EvalSet(corpus, queries)
