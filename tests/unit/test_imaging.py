"""The image path on its own (no Triton): bit depth, error texts, the configured limits."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from devkit.bombs import progressive_scan_bomb
from server.core.errors import InvalidInput
from server.embedding import imaging
from tests.photos import open_photo


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_16_bit_grey_png_is_scaled_like_its_8_bit_version():
    grey = np.asarray(open_photo("skimage/chelsea").convert("L").resize((320, 240)), dtype=np.uint16)
    wide = Image.fromarray(grey * 257)  # the same picture in 16 bits (0..65535)
    assert Image.open(io.BytesIO(_png(wide))).mode.startswith("I")
    eight = imaging.prepare(_png(Image.fromarray(grey.astype(np.uint8))))
    sixteen = imaging.prepare(_png(wide))
    assert np.abs(eight.astype(int) - sixteen.astype(int)).max() <= 1  # not clipped to white


def test_undecodable_bytes_message_names_no_python_object():
    with pytest.raises(InvalidInput) as error:
        imaging.prepare(b"definitely not an image")
    assert "image_bytes" in error.value.message and "0x" not in error.value.message
    assert "BytesIO" not in error.value.message


def test_truncated_image_message_names_no_python_object():
    data = _png(open_photo("skimage/coffee").resize((200, 150)))
    with pytest.raises(InvalidInput) as error:
        imaging.prepare(data[: len(data) // 2])
    assert "BytesIO" not in error.value.message and "0x" not in error.value.message


def test_image_over_pillows_own_bomb_limit_names_the_configured_limit():
    # 20000 x 10000 = 200 Mpixel: above Pillow's 2x89 Mpixel error threshold, so Pillow refuses inside open().
    header = Image.new("1", (20000, 10000))
    limits = imaging.Limits(max_pixels=1_234_567)
    with pytest.raises(InvalidInput) as error:
        imaging.decode_image(_png(header), limits)
    assert "1234567-pixel limit" in error.value.message, error.value.message
    assert "decompression bomb" not in error.value.message.lower()


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_views_decoded_once_are_exactly_what_prepare_gives_each_crop(kind):
    """The indexing path prepares an image and its regions from as few decodes as it can (imaging.prepare_views);
    each view must equal the query path's own `prepare`, or a query of the same picture would not match it."""
    from server.core.regions import REGION_BOXES

    image = open_photo("skimage/astronaut").resize((900, 700))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG" if kind == "jpeg" else "PNG", quality=90)
    data = buffer.getvalue()
    crops = [None, *(imaging.CropBox(*box) for box in REGION_BOXES)]
    views = imaging.prepare_views(data, crops)
    assert views.shape == (len(crops), 224, 224, 3)
    for crop, view in zip(crops, views, strict=True):
        assert np.array_equal(view, imaging.prepare(data, crop))
    assert not np.array_equal(views[0], views[-1])
    with pytest.raises(InvalidInput, match="crop"):
        imaging.prepare_views(data, [None, imaging.CropBox(0.5, 0.0, 0.4, 1.0)])


def test_a_progressive_jpeg_of_too_many_scans_is_refused_before_decoding():
    bomb = progressive_scan_bomb(side=300, extra_scans=300)
    with pytest.raises(InvalidInput, match="310 scans is over the 256-scan limit") as error:
        imaging.prepare(bomb)
    assert error.value.field == "image_bytes"
    with pytest.raises(InvalidInput, match="scan limit"):
        imaging.check_header(bomb, imaging.Limits())
    assert imaging.prepare(progressive_scan_bomb(side=300, extra_scans=100)).shape == (224, 224, 3)  # 110: allowed


def test_decode_cost_charges_a_jpeg_of_many_scans_more_than_its_pixels():
    plain = progressive_scan_bomb(side=1000, extra_scans=0)
    heavy = progressive_scan_bomb(side=1000, extra_scans=200)
    assert imaging.decode_cost(plain) == imaging.header_pixels(plain) == 1_000_000
    assert imaging.decode_cost(heavy) == 1_000_000 * (1 + 200 * imaging.SCAN_COST)
    assert imaging.decode_cost(b"not an image") is None


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_decode_over_its_cpu_budget_stops_at_its_next_read(monkeypatch, fmt):
    """The backstop for a bomb nobody foresaw: the decoder reads its input in blocks and stops once its thread has
    spent the budget (here none at all, so a multi-block image stops at its second block)."""
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (1200, 1200, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    noise.save(buffer, fmt)
    data = buffer.getvalue()
    assert len(data) > 2 * 65536
    assert imaging.prepare(data).shape == (224, 224, 3)  # within the budget the limits give it
    monkeypatch.setattr(imaging, "DECODE_BUDGET_BASE_S", 0.0)
    monkeypatch.setattr(imaging, "DECODE_BUDGET_PER_PIXEL_S", 0.0)
    with pytest.raises(InvalidInput, match="CPU budget") as error:
        imaging.prepare(data)
    assert error.value.field == "image_bytes"


def test_the_query_side_comes_from_the_header_and_its_crop() -> None:
    data = io.BytesIO()
    Image.new("RGB", (300, 120)).save(data, "PNG")
    assert imaging.shorter_side(data.getvalue()) == 120
    assert imaging.shorter_side(data.getvalue(), imaging.CropBox(0.0, 0.0, 0.1, 1.0)) == 30
    assert imaging.shorter_side(data.getvalue(), imaging.CropBox(0.0, 0.0, 0.001, 0.001)) == 1  # never 0
    assert imaging.shorter_side(b"not an image") is None
