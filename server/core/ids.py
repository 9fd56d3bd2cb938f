"""Image IDs: caller-chosen strings of 1..256 bytes of UTF-8 (the proto's contract), checked before any lookup."""

from __future__ import annotations

from server.core.errors import InvalidInput

MAX_IMAGE_ID_BYTES = 256


def check_image_id(image_id: str, field: str = "image_id") -> None:
    """INVALID_ARGUMENT for an empty or over-long ID; the message gives its size, never the ID itself."""
    size = len(image_id.encode())
    if not 1 <= size <= MAX_IMAGE_ID_BYTES:
        raise InvalidInput(f"must be 1..{MAX_IMAGE_ID_BYTES} bytes of UTF-8, got {size} bytes", field=field)


def check_image_ids(image_ids: list[str], field: str = "image_ids", max_count: int = 10_000) -> None:
    if len(image_ids) > max_count:
        raise InvalidInput(f"at most {max_count} IDs per call, got {len(image_ids)}", field=field)
    for n, image_id in enumerate(image_ids):
        check_image_id(image_id, f"{field}[{n}]")
