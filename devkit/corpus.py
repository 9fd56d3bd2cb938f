"""The real images that packages install: the demo corpus and the test photos.

Nothing is downloaded: Debian wallpaper packages (photos and artwork, several the same picture at
several resolutions: natural near-duplicates), the photos bundled inside scikit-image's wheel, and
(`demo_corpus`) Tux Paint's photographic stamps, grouped by category folder, so a demo query has related
images to find.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

WALLPAPER_DIRS = (Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers"))
STAMPS = Path("/usr/share/tuxpaint/stamps")  # Debian tuxpaint-stamps-default
# Stamp folders of the demo corpus: groups of related photos (a few dozen each at most).
DEMO_STAMP_FOLDERS = ("animals/birds", "food/fruit", "food/vegetables", "plants/flowers", "animals/mammals/bovines",
                      "animals/fish", "animals/insects", "household/tools", "space/planets", "clothes")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
# Colour photos inside the scikit-image wheel (skimage/data); the rest are grayscale, synthetic or need a download.
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                  "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "color.png")
LICENSES = {
    "gnome-backgrounds": "CC-BY-SA-3.0 / CC-BY-2.0 (see /usr/share/doc/gnome-backgrounds/copyright)",
    "mate-backgrounds": "GPL-2+ / CC-BY-SA (see /usr/share/doc/mate-backgrounds/copyright)",
    "plasma-workspace-wallpapers": "LGPL-3 / CC-BY-SA-4.0 (see /usr/share/doc/plasma-workspace-wallpapers/copyright)",
    "ukui-wallpapers": "GPL-2+ (see /usr/share/doc/ukui-wallpapers/copyright)",
    "lomiri-wallpapers-20.04": "CC-BY-SA-3.0 (see /usr/share/doc/lomiri-wallpapers-20.04/copyright)",
    "scikit-image": "BSD-3-Clause / public domain / CC0 (skimage/data/README.txt)",
    "tuxpaint-stamps-default": "GPL-2 (see /usr/share/doc/tuxpaint-stamps-default/copyright)",
}


@dataclass(frozen=True)
class CorpusImage:
    image_id: str
    path: Path
    source: str  # the package that installed it
    license: str


def _package_of(paths: list[Path]) -> dict[Path, str]:
    """Which Debian package owns each file (one dpkg call)."""
    out = subprocess.run(["dpkg", "-S", *map(str, paths)], capture_output=True, text=True, check=False).stdout
    owners = {}
    for line in out.splitlines():
        package, _, path = line.partition(": ")
        owners[Path(path)] = package.split(",")[0].split(":")[0]
    return owners


def _image_id(path: Path) -> str:
    for root in WALLPAPER_DIRS:
        if path.is_relative_to(root):
            path = path.relative_to(root)
    parts = [p for p in path.with_suffix("").parts if p not in ("contents", "images")]
    return re.sub(r"[^A-Za-z0-9._-]+", "-", "/".join(parts)).strip("-").lower()


@cache
def real_photos() -> tuple[CorpusImage, ...]:
    """All real images found, identical files once, sorted by ID (stable across runs)."""
    files = sorted(p for root in WALLPAPER_DIRS if root.exists() for p in root.rglob("*")
                   if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.is_symlink())
    owners = _package_of(files) if files else {}
    images, seen = [], set()
    for path in files:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        package = owners.get(path, "debian")
        images.append(CorpusImage(_image_id(path), path, package, LICENSES.get(package, "see the package copyright")))
    import skimage

    data_dir = Path(skimage.__file__).parent / "data"
    for name in SKIMAGE_PHOTOS:
        if (data_dir / name).exists():
            images.append(CorpusImage(f"skimage/{Path(name).stem}", data_dir / name, "scikit-image",
                                      LICENSES["scikit-image"]))
    unique = {i.image_id: i for i in images}
    return tuple(sorted(unique.values(), key=lambda i: i.image_id))


def picture_key(image_id: str) -> str:
    """Plasma wallpapers ship one picture as '<name>-<WxH>' and '<name>-screenshot': the same picture."""
    return re.sub(r"-(\d+x\d+|screenshot)$", "", image_id)


@dataclass(frozen=True)
class DemoQuery:
    name: str  # gallery file stem, e.g. "1-whole-image"
    title: str
    path: Path | None = None  # query image bytes from this file (None: search by `image_id`)
    crop: tuple[float, float, float, float] | None = None
    image_id: str | None = None  # "more like this" on an indexed image


def stamp_images(folders: tuple[str, ...] = DEMO_STAMP_FOLDERS) -> tuple[CorpusImage, ...]:
    """Tux Paint's stamps in those folders (PNG cut-outs, shown on white), IDs `tuxpaint/<folder>/<name>`."""
    license_ = LICENSES["tuxpaint-stamps-default"]
    paths = [(folder, p) for folder in folders if (STAMPS / folder).is_dir()
             for p in sorted((STAMPS / folder).glob("*.png"))]
    return tuple(CorpusImage(f"tuxpaint/{folder}/{p.stem.lower()}", p, "tuxpaint-stamps-default", license_)
                 for folder, p in paths)


def demo_corpus() -> tuple[tuple[CorpusImage, ...], tuple[DemoQuery, ...]]:
    """The corpus `vsearch demo` indexes (real photos + stamps by category) and queries whose galleries show
    related images: a bird photo that is not indexed (finds birds), a crop of an indexed photo (finds its
    source), more like this on a fruit stamp (finds fruit) and on a wallpaper shipped at several resolutions."""
    stamps = stamp_images()
    held_out = next((s for s in stamps if s.image_id == "tuxpaint/animals/birds/blackbird"),
                    next((s for s in stamps if "/birds/" in s.image_id), None))
    corpus = tuple(sorted((*real_photos(), *(s for s in stamps if s is not held_out)), key=lambda i: i.image_id))
    ids = {i.image_id for i in corpus}
    queries = []
    if held_out is not None:
        queries.append(DemoQuery("1-whole-image", f"a bird photo that is not indexed: {held_out.path.name}",
                                 path=held_out.path))
    astronaut = next((i for i in corpus if i.image_id == "skimage/astronaut"), None)
    if astronaut is not None:
        crop = (0.30, 0.0, 0.75, 0.45)
        queries.append(DemoQuery("2-crop", f"crop {crop} of {astronaut.path.name}", path=astronaut.path, crop=crop))
    fruit = next((i for i in sorted(ids) if i.startswith("tuxpaint/food/fruit/apple")), None)
    if fruit is not None:
        queries.append(DemoQuery("3-more-like-this", f"more like this: {fruit}", image_id=fruit))
    sizes: dict[str, list[str]] = {}
    for image_id in sorted(ids):
        sizes.setdefault(picture_key(image_id), []).append(image_id)
    several = next((v for _, v in sorted(sizes.items()) if len(v) >= 3), None)
    if several is not None:
        queries.append(DemoQuery("4-same-picture", f"more like this: {several[0]} (shipped at "
                                 f"{len(several)} resolutions)", image_id=several[0]))
    return corpus, tuple(queries)


def write_manifest(path: Path) -> None:
    rows = [{**asdict(i), "path": str(i.path)} for i in real_photos()]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


if __name__ == "__main__":
    photos = real_photos()
    by_source: dict[str, int] = {}
    for p in photos:
        by_source[p.source] = by_source.get(p.source, 0) + 1
    print(f"{len(photos)} images:", json.dumps(by_source, indent=1))
