"""Labelled images from installed packages, their seeded train / calib / test split, and the copy edits.

Sources (nothing downloaded, nothing committed; built at run time from what `apt-get` installed):
- `tuxpaint`: Debian `tuxpaint-stamps-default`, PNG cut-outs (composited on white like the query path does);
  category = the stamp's folder under /usr/share/tuxpaint/stamps (e.g. `animals/birds`, `food/fruit/cartoon`).
- `wallpapers`: Debian `plasma-workspace-wallpapers` ships each picture at full size, many also as a portrait
  crop and a thumbnail: a real "same picture" set (`wallpaper_resolutions`).
- `emoji`: Debian `fonts-noto-color-emoji` rendered with Pillow; category = the emoji's subgroup in
  `unicode-data`'s emoji-test.txt (e.g. `face-smiling`): same-style drawings, the hard case for duplicates.
  Skin-tone variants are left out, so no two images are the same drawing in another colour.

Held-out domains (evaluation/heldout_domains.py; never used by training, calibration or the gate's sets above):
- `openclipart`: Debian `openclipart-png` (Open Clip Art Library 0.18, public domain): ~8,100 drawings;
  category = the folder (two levels at most, e.g. `animals/birds`, `food/fruit`).
- `emojione`: Debian `ruby-gemojione` (EmojiOne 3 artwork, CC BY 4.0): ~1,800 emoji drawn in another style
  than Noto's; category = the emoji's subgroup, as for `emoji`.
- `wesnoth`, `wesnoth-units`: Debian `wesnoth-1.16-data` (GPL-2+): painted portraits, 72 px unit sprites.
- `freedroid-items`: Debian `freedroidrpg-data` (GPL-2+): inventory icons of rendered 3-D objects.
- `freeciv-flags`: Debian `freeciv-data` (GPL-2+): ~570 national flags; category = continent group.
- `neverball`: Debian `neverball-data` (GPL-2+): 178 level screenshots (rendered 3-D scenes); category = level set.
- `pingus`: Debian `pingus-data` (GPL-2+): ~510 level pieces (terrain, objects); category = theme.

Split: a seeded hash of the image ID puts each image in `train` (50%), `calib` (25%) or `test` (25%).
Training only ever sees `train`; calibration fits on `calib`; reported calibration errors are on `test`.
The copy edits are evaluation/edits.py's.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from server.core.errors import InvalidInput
from server.embedding.imaging import Limits, decode_image

STAMPS = Path("/usr/share/tuxpaint/stamps")
EMOJI_FONT = Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf")
EMOJI_TEST = Path("/usr/share/unicode/emoji/emoji-test.txt")
SKIN_TONES = {f"{c:X}" for c in range(0x1F3FB, 0x1F400)}
OPENCLIPART = Path("/usr/share/openclipart/png")  # Debian openclipart-png
EMOJIONE = Path("/usr/share/rubygems-integration/all/gems/gemojione-3.3.0/assets/png")  # Debian ruby-gemojione
WESNOTH = Path("/usr/share/games/wesnoth/1.16/data/core/images")  # Debian wesnoth-1.16-data
FREEDROID_ITEMS = Path("/usr/share/freedroidrpg/data/graphics/items")  # Debian freedroidrpg-data
FREECIV = Path("/usr/share/games/freeciv")  # Debian freeciv-data
CONTINENTS = ("European", "Asian", "African", "American", "Oceanian", "Imaginary")  # Freeciv's nation groups
NEVERBALL = Path("/usr/share/games/neverball")  # Debian neverball-data
PINGUS_GROUND = Path("/usr/share/games/pingus/data/images/groundpieces")  # Debian pingus-data
MAX_SIDE = 512  # originals are kept at most this large (stamps are up to ~1000 px)
SPLITS = {"train": 0.5, "calib": 0.25, "test": 0.25}
DEFAULT_SEED = 16


@dataclass(frozen=True)
class LabelledImage:
    image_id: str  # "tuxpaint/animals/birds/robin", "emoji/1F600"
    source: str  # "tuxpaint" | "emoji" | "openclipart" | "emojione"
    category: str  # "tuxpaint:animals/birds", "emoji:face-smiling"
    path: Path | None = None  # tuxpaint, openclipart, emojione: the PNG
    text: str | None = None  # emoji: the characters to render

    def load(self) -> Image.Image:
        """RGB on white, longest side at most MAX_SIDE."""
        if self.text is not None:
            return render_emoji(self.text)
        assert self.path is not None
        image = decode_image(self.path.read_bytes(), Limits(max_pixels=10**8))
        image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
        return image


def unit_hash(image_id: str, seed: int) -> float:
    """A seeded hash of the ID in [0, 1): stable across machines and runs."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{image_id}".encode()).digest()[:8], "big") / 2**64


def pixel_digest(image: Image.Image) -> bytes:
    """Equal for two files that decode to the same picture."""
    return hashlib.sha256(image.tobytes() + repr(image.size).encode()).digest()


def split_of(image_id: str, seed: int = DEFAULT_SEED) -> str:
    """`train`, `calib` or `test`, from a seeded hash of the ID (stable across machines and runs)."""
    u = unit_hash(image_id, seed)
    edge = 0.0
    for name, share in SPLITS.items():
        edge += share
        if u < edge:
            return name
    return "test"


def tuxpaint_images() -> list[LabelledImage]:
    if not STAMPS.exists():
        raise FileNotFoundError(f"{STAMPS}: apt-get install tuxpaint-stamps-default")
    out = []
    for path in sorted(STAMPS.rglob("*.png")):
        folder = path.parent.relative_to(STAMPS).as_posix()
        out.append(LabelledImage(f"tuxpaint/{folder}/{path.stem}", "tuxpaint", f"tuxpaint:{folder}", path=path))
    return out


def _emoji_subgroups() -> list[tuple[list[str], str]]:
    """(code points, subgroup) of every fully-qualified emoji without a skin-tone modifier (emoji-test.txt)."""
    if not EMOJI_TEST.exists():
        raise FileNotFoundError(f"{EMOJI_TEST}: apt-get install unicode-data")
    out, subgroup = [], ""
    for line in EMOJI_TEST.read_text(encoding="utf-8").splitlines():
        if line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
            continue
        match = re.match(r"^([0-9A-F ]+?)\s*;\s*fully-qualified\s*#", line)
        if match and not SKIN_TONES & set(codes := match.group(1).split()):
            out.append((codes, subgroup))
    return out


def emoji_images() -> list[LabelledImage]:
    """Fully-qualified emoji without skin-tone modifiers, labelled by subgroup."""
    if not EMOJI_FONT.exists():
        raise FileNotFoundError("apt-get install fonts-noto-color-emoji")
    return [LabelledImage(f"emoji/{'-'.join(codes)}", "emoji", f"emoji:{subgroup}",
                          text="".join(chr(int(c, 16)) for c in codes)) for codes, subgroup in _emoji_subgroups()]


def emojione_images() -> list[LabelledImage]:
    """EmojiOne's drawings of the same emoji, labelled by subgroup (its files are named by code points, without
    the FE0F variation selector)."""
    if not EMOJIONE.exists():
        raise FileNotFoundError(f"{EMOJIONE}: apt-get install ruby-gemojione")
    files = {path.stem.upper(): path for path in EMOJIONE.glob("*.png")}
    out = []
    for codes, subgroup in _emoji_subgroups():
        name = "-".join(c for c in codes if c != "FE0F")
        if name in files:
            out.append(LabelledImage(f"emojione/{name}", "emojione", f"emojione:{subgroup}", path=files.pop(name)))
    return out


def openclipart_images() -> list[LabelledImage]:
    """Open Clip Art drawings, labelled by their folder (at most two levels: `animals/birds`)."""
    if not OPENCLIPART.exists():
        raise FileNotFoundError(f"{OPENCLIPART}: apt-get install openclipart-png")
    out = []
    for path in sorted(OPENCLIPART.rglob("*.png")):
        folder = "/".join(path.parent.relative_to(OPENCLIPART).parts[:2])
        out.append(LabelledImage(f"openclipart/{path.relative_to(OPENCLIPART).with_suffix('').as_posix()}",
                                 "openclipart", f"openclipart:{folder}", path=path))
    return out


def wesnoth_images() -> list[LabelledImage]:
    """Battle for Wesnoth's painted character portraits, labelled by race or faction, and its painted story
    landscapes (one category): a painterly style that no training or team evaluation set has."""
    if not WESNOTH.exists():
        raise FileNotFoundError(f"{WESNOTH}: apt-get install wesnoth-1.16-data")
    paths = sorted(WESNOTH.glob("portraits/*/*.png")) + sorted(WESNOTH.glob("story/*.jpg"))
    return [LabelledImage(f"wesnoth/{path.relative_to(WESNOTH).with_suffix('').as_posix()}", "wesnoth",
                          f"wesnoth:{path.parent.name}", path=path) for path in paths]


def wesnoth_unit_images() -> list[LabelledImage]:
    """Battle for Wesnoth's unit sprites, labelled by faction: small pixel art (72 px for most) with transparency.
    One sprite per unit type, the base image its unit file names first; the animation frames are left out."""
    units = WESNOTH.parent / "units"
    if not units.exists():
        raise FileNotFoundError(f"{units}: apt-get install wesnoth-1.16-data")
    named = set()
    for cfg in sorted(units.rglob("*.cfg")):
        match = re.search(r'^\s*image="?(units/[^"~\s]+\.png)', cfg.read_text(errors="replace"), re.MULTILINE)
        if match and (WESNOTH / match.group(1)).is_file():
            named.add(match.group(1))
    return [LabelledImage(f"wesnoth/{name.removesuffix('.png')}", "wesnoth-units",
                          f"wesnoth-units:{name.split('/')[1]}", path=WESNOTH / name) for name in sorted(named)]


def freedroid_item_images() -> list[LabelledImage]:
    """FreedroidRPG's inventory icons (rendered 3-D objects, 64-128 px), labelled by their item group (`weapons`,
    `pills_potions`, ...; items without a group are `misc`)."""
    if not FREEDROID_ITEMS.exists():
        raise FileNotFoundError(f"{FREEDROID_ITEMS}: apt-get install freedroidrpg-data")
    out = []
    for path in sorted(FREEDROID_ITEMS.rglob("inv_image.png")):
        parts = path.parent.relative_to(FREEDROID_ITEMS).parts
        group = parts[0] if len(parts) > 1 else "misc"
        out.append(LabelledImage(f"freedroid/{'/'.join(parts)}", "freedroid-items", f"freedroid-items:{group}",
                                 path=path))
    return out


def freeciv_flag_images() -> list[LabelledImage]:
    """Freeciv's national flags (the large size, ~570 nations), labelled by the nation's first continent group
    (`European`, `Asian`, ...; nations with none are `other`). The hard case for copies: tricolours and crosses
    that differ only in colour or orientation, which a grayscale or mirrored copy can make identical."""
    nations = FREECIV / "nation"
    if not nations.exists():
        raise FileNotFoundError(f"{nations}: apt-get install freeciv-data")
    out, named = [], set()
    for ruleset in sorted(nations.glob("*.ruleset")):
        text = ruleset.read_text(errors="replace")
        flag = re.search(r'^flag\s*=\s*"([^"]+)"', text, re.MULTILINE)
        groups = re.search(r"^groups\s*=(.*)$", text, re.MULTILINE)
        path = FREECIV / "flags" / f"{flag.group(1)}-large.png" if flag else None
        if path is None or not path.is_file() or path in named:
            continue
        named.add(path)
        listed = re.findall(r'"([^"]+)"', groups.group(1)) if groups else []
        continent = next((g for g in listed if g in CONTINENTS), "other")
        out.append(LabelledImage(f"freeciv/{path.stem}", "freeciv-flags", f"freeciv-flags:{continent}", path=path))
    return out


def neverball_images() -> list[LabelledImage]:
    """Neverball's level screenshots (256 px renders of 3-D scenes, full frame), labelled by level set."""
    if not NEVERBALL.exists():
        raise FileNotFoundError(f"{NEVERBALL}: apt-get install neverball-data")
    return [LabelledImage(f"neverball/{path.parent.name}/{path.stem}", "neverball",
                          f"neverball:{path.parent.name.removeprefix('shot-')}", path=path)
            for path in sorted(NEVERBALL.glob("shot-*/*.jpg"))]


def pingus_ground_images() -> list[LabelledImage]:
    """Pingus' level pieces (painted terrain, snow, sweets, machinery; mostly 30-260 px, transparent edges),
    labelled by theme (`snow`, `desert`, ...; the kind of piece, ground or solid or transparent, is not a theme)."""
    if not PINGUS_GROUND.exists():
        raise FileNotFoundError(f"{PINGUS_GROUND}: apt-get install pingus-data")
    return [LabelledImage(f"pingus/{path.relative_to(PINGUS_GROUND).with_suffix('').as_posix()}", "pingus",
                          f"pingus:{path.parent.name}", path=path) for path in sorted(PINGUS_GROUND.glob("*/*/*.png"))]


@cache
def _emoji_font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(EMOJI_FONT), 109)  # the one bitmap size the CBDT font has


def render_emoji(text: str) -> Image.Image:
    canvas = Image.new("RGBA", (160, 160), (255, 255, 255, 0))
    ImageDraw.Draw(canvas).text((80, 80), text, font=_emoji_font(), embedded_color=True, anchor="mm")
    box = canvas.getbbox() or (0, 0, 160, 160)
    pad = 8
    box = (max(0, box[0] - pad), max(0, box[1] - pad), min(160, box[2] + pad), min(160, box[3] + pad))
    white = Image.new("RGB", canvas.size, (255, 255, 255))
    white.paste(canvas, mask=canvas.getchannel("A"))
    return white.crop(box)


@cache
def _distinct(sources: tuple[str, ...]) -> tuple[LabelledImage, ...]:
    loaders = {"tuxpaint": tuxpaint_images, "emoji": emoji_images, "openclipart": openclipart_images,
               "emojione": emojione_images, "wesnoth": wesnoth_images,
               "wesnoth-units": wesnoth_unit_images, "freedroid-items": freedroid_item_images}
    seen, out = set(), []
    for image in (image for source in sources for image in loaders[source]()):
        try:
            loaded = image.load()
        except InvalidInput:  # a few Open Clip Art drawings are over 100 Mpx: left out, as the gateway would
            continue
        digest = pixel_digest(loaded)
        if digest not in seen:
            seen.add(digest)
            out.append(image)
    return tuple(out)


def labelled_images(sources: tuple[str, ...] = ("tuxpaint", "emoji")) -> list[LabelledImage]:
    """Every labelled image once: a picture that ships twice (a stamp in two folders, flags that Noto draws
    alike) keeps its first ID only, so no image is both a training image and a held-out one."""
    return list(_distinct(tuple(sources)))


def of_split(images: list[LabelledImage], splits: set[str], seed: int = DEFAULT_SEED) -> list[LabelledImage]:
    return [i for i in images if split_of(i.image_id, seed) in splits]


GCOMPRIS_DETAILS = Path("/usr/share/gcompris-qt/rcc/details.rcc")  # Debian gcompris-qt-data


def gcompris_details() -> tuple[dict[str, Image.Image], list[tuple[str, str, Image.Image]]]:
    """GCompris' "details" activity: full scenes (`<scene>_background.webp`, paintings and landmarks) and the
    small detail cut-outs of each (`<scene>_<n>.webp`, ~72 px, transparent outside): a real ground truth of
    "find the picture this detail comes from". Returns ({scene: image}, [(detail id, scene, image)])."""
    from evaluation.rcc import read_rcc

    if not GCOMPRIS_DETAILS.exists():
        raise FileNotFoundError(f"{GCOMPRIS_DETAILS}: apt-get install gcompris-qt-data")
    scenes, details = {}, []
    for name, data in sorted(read_rcc(GCOMPRIS_DETAILS)):
        if not name.endswith(".webp"):
            continue
        stem = Path(name).stem
        scene = re.sub(r"_(\d+|background)$", "", stem)
        image = decode_image(data)
        if stem.endswith("_background"):
            scenes[scene] = image
        else:
            details.append((f"gcompris/details/{stem}", scene, image))
    return scenes, [d for d in details if d[1] in scenes]


PLASMA_WALLPAPERS = Path("/usr/share/wallpapers")  # Debian plasma-workspace-wallpapers


def wallpaper_resolutions(root: Path = PLASMA_WALLPAPERS) -> dict[str, list[Path]]:
    """Every Plasma wallpaper shipped as two or more distinct files: `<name>` (or `<name>-dark`) -> its files,
    largest first. The package ships the picture at full size, often a portrait crop of it (1080x1920), and a
    ~400x250 thumbnail (`screenshot`); the other sizes in its folder are symlinks to the full-size file and
    are left out (the same bytes are no test)."""
    def area(path: Path) -> int:
        with Image.open(path) as image:
            return image.width * image.height

    pictures = {}
    for folder in sorted(root.glob("*/contents/images*")):
        files = [f for f in folder.iterdir() if f.suffix.lower() in (".jpg", ".png") and not f.is_symlink()]
        if folder.name == "images":
            files += [f for f in folder.parent.glob("screenshot.*") if not f.is_symlink()]
        if len(files) >= 2:
            pictures[folder.parents[1].name + ("" if folder.name == "images" else "-dark")] = sorted(
                files, key=area, reverse=True)
    return pictures
