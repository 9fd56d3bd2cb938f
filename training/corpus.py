"""Unlabelled training images of many kinds, from Debian packages installed at set-up time (issue 28, part 1).

    python -m training.corpus            (what is installed: images per source and kind)

Each source is a package, the folders of it that hold raster images, the kind of image and the package's licence
(from its /usr/share/doc/<package>/copyright). Only images at least MIN_SIDE pixels on their short side are taken,
identical files once, and icon themes' icons once (the largest of the sizes each is shipped at). None of these
packages is an evaluation set: the labelled sets' held-out splits (evaluation/quality_sets.py: Tux Paint, Noto
emoji), the held-out domains (Open Clip Art, EmojiOne, Wesnoth), GCompris (its "details" set) and the
wallpapers' several resolutions are read elsewhere and never here.
"""

from __future__ import annotations

import argparse
import hashlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MIN_SIDE = 96
SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
PACKAGES = ("stellarium-data", "oxygen-icon-theme", "hedgewars-data", "extremetuxracer-data", "marble-data")


@dataclass(frozen=True)
class Source:
    package: str
    kind: str
    licence: str
    patterns: tuple[str, ...]  # globs of image files
    by_name: bool = False  # the same image at several sizes under one file name (icon themes): keep the largest


SOURCES = (
    Source("stellarium-data", "astronomical photographs", "GPL-2+ (image credits in the package)",
           ("/usr/share/stellarium/nebulae/default/*",)),
    Source("stellarium-data", "sky-culture illustrations", "GPL-2+ (artwork credits per sky culture)",
           ("/usr/share/stellarium/skycultures/*/*",)),
    Source("stellarium-data", "landscape panoramas and textures", "GPL-2+",
           ("/usr/share/stellarium/landscapes/*/*", "/usr/share/stellarium/textures/*")),
    Source("oxygen-icon-theme", "icons", "LGPL-3+", ("/usr/share/icons/oxygen/base/*/*/*",), by_name=True),
    Source("hedgewars-data", "game art", "GPL-2 / MIT / GFDL-1.3 / BSD-3-clause (per file, see copyright)",
           ("/usr/share/games/hedgewars/Data/Themes/*/*", "/usr/share/games/hedgewars/Data/Graphics/*")),
    Source("extremetuxracer-data", "terrain textures and game art", "GPL-2+",
           ("/usr/share/games/etr/terrains/*", "/usr/share/games/etr/textures/*")),
    Source("marble-data", "map application screenshots", "LGPL-2.1+ / GFDL (documentation)",
           ("/usr/share/doc/HTML/*/marble/*",)),
)


@dataclass(frozen=True)
class CorpusImage:
    path: Path
    package: str
    kind: str


def _side(path: Path) -> int:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return min(image.size)
    except (OSError, ValueError, Image.DecompressionBombError):
        return 0


def images_of(source: Source) -> list[CorpusImage]:
    """The source's usable images, sorted by path (stable across runs)."""
    files = sorted({p for pattern in source.patterns for p in Path("/").glob(pattern.lstrip("/"))
                    if p.suffix.lower() in SUFFIXES and p.is_file()})
    if source.by_name:
        largest: dict[str, Path] = {}
        for path in files:
            if path.name not in largest or path.stat().st_size > largest[path.name].stat().st_size:
                largest[path.name] = path
        files = sorted(largest.values())
    seen, kept = set(), []
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).digest()
        if digest in seen or _side(path) < MIN_SIDE:
            continue
        seen.add(digest)
        kept.append(CorpusImage(path, source.package, source.kind))
    return kept


def corpus(per_source: int | None = None, seed: int = 0) -> list[CorpusImage]:
    """Every installed source's images (at most `per_source` of each, a seeded sample); a source whose package is
    not installed gives none."""
    rng = np.random.default_rng(seed)
    picked = []
    for source in SOURCES:
        found = images_of(source)
        if per_source is not None and len(found) > per_source:
            found = [found[i] for i in sorted(rng.choice(len(found), per_source, replace=False))]
        picked += found
    return picked


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.parse_args(argv)
    counts = Counter((image.package, image.kind) for image in corpus())
    for (package, kind), n in sorted(counts.items()):
        print(f"{n:6d}  {package:22s} {kind}")
    print(f"{sum(counts.values()):6d}  in all")


if __name__ == "__main__":
    main()
