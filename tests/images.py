"""Small real image files for upload tests, built byte by byte (no imaging library)."""

from __future__ import annotations

import struct
import zlib


def png(width: int = 96, height: int = 32, rgb: tuple[int, int, int] = (11, 110, 79)) -> bytes:
    """A valid RGB PNG: a coloured block with a lighter stripe."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    rows = b""
    for y in range(height):
        colour = bytes(rgb) if y % 8 < 6 else bytes(min(255, c + 120) for c in rgb)
        rows += b"\x00" + colour * width
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def jpeg_like() -> bytes:
    """The markers a JPEG starts and ends with, around filler."""
    return b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00" + \
        b"\x00" * 64 + b"\xff\xd9"


def webp_like() -> bytes:
    payload = b"WEBPVP8L" + struct.pack("<I", 8) + b"\x2f" + b"\x00" * 7
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


SVG_WITH_SCRIPT = (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg">'
                   b'<script>alert(document.cookie)</script><rect width="10" height="10"/></svg>')
