"""Fuzz targets: each takes raw bytes and must either succeed or raise the domain's InvalidInput (which becomes
INVALID_ARGUMENT); any other exception, a hang or a crash is a finding. Shared by the atheris harness
(fuzz/run.py) and the regression replay (tests/unit/test_input_fuzzing.py)."""

from __future__ import annotations

import struct

import numpy as np

from protos.visual_search.v1 import visual_search_pb2 as pb
from server.api.interceptors import _parse
from server.api.service import _query
from server.core.config import Settings
from server.core.errors import InvalidInput
from server.core.ids import check_image_id
from server.embedding import imaging
from server.query.search import Searcher

# Small limits so a fuzz input cannot make one execution decode hundreds of megapixels.
LIMITS = imaging.Limits(max_bytes=2 * 1024 * 1024, max_pixels=4_000_000)


def image_path(data: bytes) -> None:
    """First 16 bytes: a crop box (4 floats, any bit pattern), used if the first byte is odd; the rest: the
    encoded image."""
    if len(data) < 16:
        return
    crop = imaging.CropBox(*struct.unpack("<4f", data[:16])) if data[0] & 1 else None
    data = data[16:]
    try:
        if crop is not None:
            crop.validate()
        pixels = imaging.prepare(data, crop, LIMITS)
    except InvalidInput:
        return
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8, pixels.shape
    imaging.header_pixels(data)


_SEARCHER = Searcher.__new__(Searcher)  # validation only: no store, encoder or metrics
_SEARCHER.settings = Settings()


def search_request(data: bytes) -> None:
    """A SearchRequest as the wire delivers it: parse (as the interceptor does), translate, validate."""
    try:
        request = _parse(pb.SearchRequest.FromString, data)
        query = _query(request)
        if query.crop is not None:
            query.crop.validate()
        _SEARCHER._validate(query)
        if query.image_id is not None:
            check_image_id(query.image_id)
    except InvalidInput:
        return


TARGETS = {"image_path": image_path, "search_request": search_request}
