"""The many-kinds training corpus (training/corpus.py): what it takes from a package's folders, and that the
packages it names are the ones set-up installs."""

from __future__ import annotations

import re
from pathlib import Path

from PIL import Image

from server.core.config import REPO_ROOT
from training.corpus import MIN_SIDE, PACKAGES, SOURCES, Source, corpus, images_of


def _png(path: Path, side: int, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (side, side), colour).save(path)
    return path


def test_a_source_keeps_each_picture_once_and_only_large_enough_ones(tmp_path):
    for side in (16, 128, 256):  # one icon at three sizes, as icon themes ship it
        _png(tmp_path / f"{side}x{side}" / "apps" / "editor.png", side, (200, 10, 10))
    big = _png(tmp_path / "art" / "a.png", 300, (10, 200, 10))
    (tmp_path / "art" / "a-copy.png").write_bytes(big.read_bytes())  # the same file twice
    _png(tmp_path / "art" / "tiny.png", MIN_SIDE - 1, (10, 10, 200))
    icons = images_of(Source("p", "icons", "x", (f"{tmp_path}/*x*/*/*",), by_name=True))
    assert [(i.path.parent.parent.name, i.path.name) for i in icons] == [("256x256", "editor.png")]
    art = images_of(Source("p", "art", "x", (f"{tmp_path}/art/*",)))
    assert [i.path.name for i in art] == ["a-copy.png"]  # one of the two identical files; not the tiny one


def test_a_package_not_installed_gives_no_images(tmp_path):
    assert images_of(Source("absent", "none", "x", (f"{tmp_path}/nothing/*",))) == []
    assert all(image.package in PACKAGES for image in corpus(per_source=3))


def test_setup_installs_exactly_the_corpus_packages_and_no_evaluation_package():
    makefile = (REPO_ROOT / "Makefile").read_text()
    listed = re.search(r"^TRAINING_PACKAGES := (.+)$", makefile, re.MULTILINE)
    assert listed is not None and tuple(listed.group(1).split()) == PACKAGES
    assert {s.package for s in SOURCES} == set(PACKAGES)
    evaluation_paths = ("tuxpaint", "openclipart", "gemojione", "gcompris", "noto", "wallpapers", "backgrounds")
    assert not [p for s in SOURCES for p in s.patterns if any(e in p for e in evaluation_paths)]
