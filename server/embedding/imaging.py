"""Decode, orient, crop and resize images: the first stage of both the query and the indexing path."""

from __future__ import annotations

import io
import math
import re
import time
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from server.core.errors import InvalidInput
from server.core.regions import REGION_BOXES
from server.embedding.contract import INPUT_SIZE

ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")


# A progressive JPEG decodes its whole coefficient buffer once per scan: encoders write ~10 scans, and 20,000 copies
# of a tiny scan made a 160 KB file cost seconds of decode that neither the byte nor the pixel limit sees (issue
# 25). Limit the scans as libjpeg-turbo's scan limit does (nvImageCodec's default is 256 too).
MAX_JPEG_SCANS = 256
SOS = b"\xff\xda"  # start of scan: in entropy-coded data 0xFF is always followed by 0x00 or a restart marker
USUAL_JPEG_SCANS = 10
SCAN_COST = 1 / 50  # decode cost of a scan beyond the usual ones, in units of the image's pixels (measured ~1/200)
# A backstop for what the limits above do not foresee: a decode may spend this much CPU time, and the decoder reads
# its input in 64 KB blocks, so one over its budget stops at the next block. Measured worst legitimate cost: 26 ns a
# pixel (a smooth 7000x7000 PNG); the heaviest JPEG the scan limit allows: 11 ns.
DECODE_BUDGET_BASE_S = 0.25
DECODE_BUDGET_PER_PIXEL_S = 100e-9


@dataclass(frozen=True)
class Limits:
    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 50_000_000
    max_jpeg_scans: int = MAX_JPEG_SCANS


@dataclass(frozen=True)
class CropBox:
    """Normalized crop (origin top-left, after EXIF orientation)."""

    x_min: float
    y_min: float
    x_max: float
    y_max: float

    def as_tuple(self) -> tuple[float, float, float, float]:
        return self.x_min, self.y_min, self.x_max, self.y_max

    def validate(self) -> None:
        values = (self.x_min, self.y_min, self.x_max, self.y_max)
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
            raise InvalidInput(f"coordinates must be within [0, 1], got {values}", field="crop")
        if not (self.x_min < self.x_max and self.y_min < self.y_max):
            raise InvalidInput("needs x_min < x_max and y_min < y_max (an empty box)", field="crop")


def region_views(crop: CropBox | None) -> list[CropBox | None]:
    """What an image is indexed as: itself (or its crop), then each of REGION_BOXES within it."""
    x0, y0, x1, y1 = crop.as_tuple() if crop is not None else (0.0, 0.0, 1.0, 1.0)
    w, h = x1 - x0, y1 - y0
    return [crop, *(CropBox(x0 + b[0] * w, y0 + b[1] * h, x0 + b[2] * w, y0 + b[3] * h) for b in REGION_BOXES)]


def check_size(data: bytes, limits: Limits, field: str = "image_bytes") -> None:
    """The byte limit, checked before anything is decoded or sent on."""
    if not data:
        raise InvalidInput("is empty", field=field)
    if len(data) > limits.max_bytes:
        raise InvalidInput(f"{len(data)} bytes is over the {limits.max_bytes}-byte limit", field=field)


def jpeg_scans(data: bytes) -> int:
    """How many scans a JPEG holds (an upper bound: an embedded EXIF thumbnail's scans count too); 0 for others."""
    return data.count(SOS) if data[:2] == b"\xff\xd8" else 0


def check_scans(data: bytes, limits: Limits, field: str = "image_bytes") -> None:
    if (scans := jpeg_scans(data)) > limits.max_jpeg_scans:
        raise InvalidInput(f"a JPEG of {scans} scans is over the {limits.max_jpeg_scans}-scan limit (each scan costs "
                           "a pass over the whole image)", field=field)


def decode_cost(data: bytes) -> int | None:
    """What decoding costs, in pixels, from the header alone: width x height, more for a JPEG of many scans. What
    admission charges (server/runtime/admission.py); None if the header cannot be read."""
    pixels = header_pixels(data)
    if pixels is None:
        return None
    return int(pixels * (1 + max(0, jpeg_scans(data) - USUAL_JPEG_SCANS) * SCAN_COST))


def check_header(data: bytes, limits: Limits, field: str = "image_bytes") -> tuple[int, int]:
    """Byte, scan and pixel limits from the header alone (nothing decoded); returns (width, height)."""
    check_size(data, limits, field)
    check_scans(data, limits, field)
    try:
        width, height = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS).size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidInput(f"not a decodable JPEG, PNG, WebP or GIF image ({exc})", field=field) from exc
    if width * height > limits.max_pixels:
        raise InvalidInput(f"{width}x{height} pixels is over the {limits.max_pixels}-pixel limit", field=field)
    return width, height


class _Budgeted(io.BytesIO):
    """An image's bytes whose reader (the decoder) stops at its next read once its thread is over a CPU budget."""

    def __init__(self, data: bytes, field: str) -> None:
        super().__init__(data)
        self.field, self.deadline = field, math.inf

    def start(self, budget_s: float) -> None:
        self.budget_s, self.deadline = budget_s, time.thread_time() + budget_s

    def read(self, size: int | None = -1) -> bytes:
        if time.thread_time() > self.deadline:
            raise InvalidInput(f"decoding took over its {self.budget_s:.2f} s CPU budget (far more than its pixels "
                               "should cost)", field=self.field)
        return super().read(size)


def decode_image(data: bytes, limits: Limits = Limits(), field: str = "image_bytes",
                 needed: int | None = None) -> Image.Image:
    """Bytes -> oriented RGB image. Size limits are checked on the header, before any pixel is decoded.

    `needed`: the smallest side, in pixels, the caller will use; JPEGs then decode at a reduced scale (libjpeg's
    DCT scaling), which costs a fraction of a full decode (benchmarks/results/profile_gateway.md).
    """
    check_size(data, limits, field)
    check_scans(data, limits, field)
    try:
        with warnings.catch_warnings():
            # Our own pixel limit applies; Pillow's bomb warning is an error so nothing slips past either.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            stream = _Budgeted(data, field)
            image = Image.open(stream, formats=ACCEPTED_FORMATS)
            width, height = image.size
            if width * height > limits.max_pixels:
                raise InvalidInput(f"{width}x{height} pixels is over the {limits.max_pixels}-pixel limit",
                                   field=field)
            stream.start(DECODE_BUDGET_BASE_S + width * height * DECODE_BUDGET_PER_PIXEL_S)
            if image.format == "JPEG" and needed:
                image.draft("RGB", (needed, needed))
            image.seek(0)  # GIF/WebP: first frame
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow refuses before it reports the size (its own limit is above ours): name the configured limit.
        raise InvalidInput(f"over the {limits.max_pixels}-pixel limit", field=field) from exc
    except UnidentifiedImageError as exc:  # its message names a BytesIO object, not the input
        raise InvalidInput("not a decodable JPEG, PNG, WebP or GIF image", field=field) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput(f"not a decodable JPEG, PNG, WebP or GIF image ({_reason(exc)})", field=field) from exc


def _reason(exc: BaseException) -> str:
    """Pillow's reason without object addresses (`<_io.BytesIO object at 0x...>`), bounded."""
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the input", str(exc))[:200]


_WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header alone (nothing decoded); None if the header cannot be read (the decode then
    fails with the precise error)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS).size
    except Exception:  # Pillow's bomb error included: the decode refuses it with the configured limit
        return None


def header_pixels(data: bytes) -> int | None:
    """Width x height from the header alone: what a request will cost to decode."""
    size = header_size(data)
    return None if size is None else size[0] * size[1]


def shorter_side(data: bytes, crop: CropBox | None = None) -> int | None:
    """The query's shorter side in pixels, after its crop, from the header alone (an EXIF turn swaps the sides,
    not the shorter one); None if the header cannot be read."""
    size = header_size(data)
    if size is None:
        return None
    x0, y0, x1, y1 = crop.as_tuple() if crop is not None else (0.0, 0.0, 1.0, 1.0)
    return max(1, round(min(size[0] * (x1 - x0), size[1] * (y1 - y0))))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Transparent pixels become white: product cut-outs are shown on white backgrounds. 16-bit grey is scaled
    to 8 bits (Pillow's convert would clip everything above 255 to white)."""
    if image.mode in _WIDE_MODES:
        wide = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)  # PNG's 16-bit grey opens as I;16 or I
        return Image.fromarray((wide >> 8).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def crop_normalized(image: Image.Image, box: CropBox) -> Image.Image:
    box.validate()
    width, height = image.size
    left, top = math.floor(box.x_min * width), math.floor(box.y_min * height)
    right, bottom = math.ceil(box.x_max * width), math.ceil(box.y_max * height)
    if right - left < 1 or bottom - top < 1:
        raise InvalidInput(f"selects less than one pixel of a {width}x{height} image", field="crop")
    return image.crop((left, top, right, bottom))


def to_model_input(image: Image.Image) -> np.ndarray:
    """Whole image squashed to 224x224 (no centre crop: a crop would hide the edges a user may have selected)."""
    resized = image.resize((INPUT_SIZE, INPUT_SIZE), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(resized, dtype=np.uint8)


def prepare(data: bytes, crop: CropBox | None = None, limits: Limits = Limits(),
            field: str = "image_bytes") -> np.ndarray:
    """Bytes (+ optional crop) -> uint8 [224, 224, 3], the encoder's input."""
    return prepare_views(data, [crop], limits, field)[0]


def prepare_views(data: bytes, crops: list[CropBox | None], limits: Limits = Limits(),
                  field: str = "image_bytes") -> np.ndarray:
    """Bytes -> uint8 [len(crops), 224, 224, 3] (None: the whole image), each exactly what `prepare` gives for it,
    decoding as little as possible: indexing an image with its regions decoded a 5120x2880 PNG (~0.3 s) once per
    region. A JPEG decodes once per reduced scale needed (cheap); other formats decode once."""
    jpeg = data[:2] == b"\xff\xd8"
    decoded: dict[int | None, Image.Image] = {}
    views = []
    for crop in crops:
        # The crop (or the whole image) must keep at least INPUT_SIZE pixels a side after a reduced-scale decode.
        fraction = min(crop.x_max - crop.x_min, crop.y_max - crop.y_min) if crop is not None else 1.0
        needed = math.ceil(INPUT_SIZE / fraction) if fraction > 0 else None
        key = needed if jpeg else None
        if key not in decoded:
            decoded[key] = decode_image(data, limits, field, needed)
        image = decoded[key]
        views.append(to_model_input(image if crop is None else crop_normalized(image, crop)))
    return np.stack(views)
