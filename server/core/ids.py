"""Image and owner IDs, checked before any lookup.

Image IDs are caller-chosen strings of 1..256 bytes of UTF-8 (the proto's contract). A writer's image IDs live in its
owner's namespace, `<owner_id>/...`; owner IDs never contain '/', so no owner's namespace lies inside another's
(`acme/...` cannot hold owner `acme/bob`'s IDs: there is no such owner).
"""

from __future__ import annotations

from server.core.errors import InvalidInput

MAX_IMAGE_ID_BYTES = 256
MAX_OWNER_ID_BYTES = 128
NAMESPACE_SEPARATOR = "/"


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


def owner_id_problem(owner_id: str) -> str | None:
    """Why `owner_id` cannot be an owner (None: it can). Empty: an image of no owner, which only admins manage."""
    size = len(owner_id.encode())
    if size > MAX_OWNER_ID_BYTES:
        return f"must be at most {MAX_OWNER_ID_BYTES} bytes of UTF-8, got {size} bytes"
    if NAMESPACE_SEPARATOR in owner_id:
        return (f"must not contain '{NAMESPACE_SEPARATOR}': an owner's image IDs start with '<owner_id>/', and one "
                "owner's namespace must never lie inside another's")
    if not owner_id.isprintable():
        return "must be printable characters only"
    return None


def check_owner_id(owner_id: str, field: str = "owner_id") -> None:
    if (problem := owner_id_problem(owner_id)) is not None:
        raise InvalidInput(problem, field=field)
