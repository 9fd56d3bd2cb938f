"""Read Qt resource bundles (`.rcc`, as GCompris ships its images) without Qt.

The binary format, from Qt's rcc.cpp: a header `qres`, version, then offsets of the tree, the data and the
names. Tree nodes are 14 bytes (version 1) or 22 bytes (version >= 2, with a modification time): name offset,
flags (1 zlib, 2 directory, 4 zstd), then either (child count, first child index) or (territory, language,
data offset). A name is a 16-bit length, a 32-bit hash and UTF-16BE characters; data is a 32-bit size and
the bytes (zlib data carries Qt's 4-byte uncompressed size first).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

COMPRESSED, DIRECTORY, COMPRESSED_ZSTD = 0x01, 0x02, 0x04


def read_rcc(path: Path) -> Iterator[tuple[str, bytes]]:
    """(path inside the bundle, file bytes) for every file; zstd-compressed entries are skipped."""
    blob = Path(path).read_bytes()
    if blob[:4] != b"qres":
        raise ValueError(f"{path}: not a Qt resource bundle")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    node_size = 14 if version == 1 else 22

    def name(offset: int) -> str:
        (length,) = struct.unpack(">H", blob[names + offset:names + offset + 2])
        return blob[names + offset + 6:names + offset + 6 + 2 * length].decode("utf-16-be")

    def walk(index: int, prefix: str) -> Iterator[tuple[str, bytes]]:
        at = tree + index * node_size
        name_offset, flags = struct.unpack(">IH", blob[at:at + 6])
        here = f"{prefix}/{name(name_offset)}" if index else ""
        if flags & DIRECTORY:
            count, first = struct.unpack(">II", blob[at + 6:at + 14])
            for child in range(first, first + count):
                yield from walk(child, here)
            return
        (offset,) = struct.unpack(">I", blob[at + 10:at + 14])
        (size,) = struct.unpack(">I", blob[data + offset:data + offset + 4])
        payload = blob[data + offset + 4:data + offset + 4 + size]
        if flags & COMPRESSED_ZSTD:
            return
        yield here, zlib.decompress(payload[4:]) if flags & COMPRESSED else payload

    yield from walk(0, "")
