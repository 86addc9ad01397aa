# SPDX-License-Identifier: Apache-2.0
"""Image dimensions read from the file header, before anything is decoded.

A compressed image is a decompression bomb waiting to happen: a 95 KB PNG can
declare 10000 x 10000 pixels and make ``tf.io.decode_image`` allocate 300 MB, and
the float resize after it four times that. The header says how big the decoded
picture will be, so :func:`check_image` refuses it before any pixel is decoded.

The formats are the ones ``tf.io.decode_image`` accepts, recognised by the same
leading bytes TensorFlow looks at: JPEG (the first SOFn frame header), PNG (IHDR),
GIF (the logical screen and every frame's image descriptor: giflib reads every
frame of an animation even when TensorFlow keeps only the first, which it makes as
large as the largest frame) and BMP (the
sizes at the offsets TensorFlow's decoder reads).

Example:
    >>> size = image_size(png_bytes)                    # doctest: +SKIP
    >>> size.format, size.width, size.height            # doctest: +SKIP
    ('png', 640, 480)
    >>> check_image(png_bytes, max_pixels=40_000_000)   # doctest: +SKIP
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = ["DEFAULT_MAX_PIXELS", "FORMATS", "ImageHeaderError", "ImageSize", "check_image",
           "image_size"]

DEFAULT_MAX_PIXELS = 40_000_000
"""40 megapixels: more than any phone camera (about 15 bytes of host memory per pixel
are needed to decode and resize one image, so 600 MB at this limit)."""
FORMATS = ("JPEG", "PNG", "GIF", "BMP")

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers: C0..CF except DHT (C4), JPG (C8) and DAC (CC)
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# markers without a length field: TEM, RST0..7 (SOI is only at the start)
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})


class ImageHeaderError(ValueError):
    """Not an image of a known format, a damaged header, or an image over the pixel limit."""


@dataclass(frozen=True)
class ImageSize:
    """What a header declares."""

    format: str
    """``jpeg``, ``png``, ``gif`` or ``bmp``."""
    width: int
    height: int
    frames: int = 1
    """Frames of a GIF (image descriptors); 1 for the other formats."""
    pixels: int = 0
    """Pixels the decoder allocates: ``width * height``, for a GIF at least the sum of its
    frames' areas (0: ``width * height``)."""

    def __post_init__(self) -> None:
        if not self.pixels:
            object.__setattr__(self, "pixels", self.width * self.height)

    def describe(self) -> str:
        text = f"{self.format.upper()} of {self.width}x{self.height} pixels"
        if self.frames > 1 or self.pixels != self.width * self.height:
            text += f" in {self.frames} frame(s), {self.pixels} pixels decoded"
        return text


def image_size(data: bytes) -> ImageSize:
    """The format and dimensions ``data`` declares; :class:`ImageHeaderError` if it cannot tell."""
    data = bytes(data)
    try:
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg(data)
        if data[:3] == _PNG_SIGNATURE[:3]:
            return _png(data)
        if data[:4] == b"GIF8":
            return _gif(data)
        if data[:2] == b"BM":
            return _bmp(data)
    except (struct.error, IndexError):
        raise ImageHeaderError(f"truncated image header ({len(data)} bytes)") from None
    raise ImageHeaderError(f"not an image file: the data ({len(data)} bytes) starts with none "
                           f"of the {', '.join(FORMATS)} signatures")


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageSize:
    """:func:`image_size`, refusing an image that decodes to more than ``max_pixels``."""
    size = image_size(data)
    if size.pixels > max_pixels:
        raise ImageHeaderError(f"{size.describe()} ({size.pixels} pixels) is over the limit of "
                               f"{max_pixels} pixels")
    return size


def _positive(fmt: str, width: int, height: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageHeaderError(f"{fmt} header declares an empty image ({width}x{height})")


def _png(d: bytes) -> ImageSize:
    if d[:8] != _PNG_SIGNATURE:
        raise ImageHeaderError("damaged PNG signature")
    _, kind, width, height = struct.unpack_from(">I4sII", d, 8)
    if kind != b"IHDR":
        raise ImageHeaderError("PNG does not start with an IHDR chunk")
    _positive("PNG", width, height)
    return ImageSize("png", width, height)


def _jpeg(d: bytes) -> ImageSize:
    i, n = 2, len(d)
    while True:
        # libjpeg skips anything up to the next 0xFF (with a warning), then fill bytes
        i = d.find(b"\xff", i)
        if i < 0:
            raise ImageHeaderError("JPEG ends before its frame header (SOFn)")
        while i < n and d[i] == 0xFF:
            i += 1
        if i >= n:
            raise ImageHeaderError("JPEG ends before its frame header (SOFn)")
        marker = d[i]
        i += 1
        if marker == 0x00 or marker in _JPEG_STANDALONE:
            continue
        if marker in (0xD9, 0xDA):  # EOI, SOS: the frame header must come first
            raise ImageHeaderError("JPEG has no frame header (SOFn) before its scan")
        (length,) = struct.unpack_from(">H", d, i)
        if marker in _JPEG_SOF:
            height, width = struct.unpack_from(">HH", d, i + 3)
            _positive("JPEG", width, height)  # height 0 (DNL) libjpeg refuses too
            return ImageSize("jpeg", width, height)
        i += max(length, 2)  # libjpeg skips nothing more for a length under 2


def _gif(d: bytes) -> ImageSize:
    width, height, flags = struct.unpack_from("<HHB", d, 6)
    screen = width * height  # some decoders allocate the logical screen: count it too
    i = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)
    n = len(d)
    frames = area = widest = tallest = 0

    def skip_sub_blocks(i: int) -> int:
        while i < n:
            size = d[i]
            i += 1 + size
            if size == 0:
                break
        return i

    while i < n:
        block = d[i]
        i += 1
        if block == 0x21:  # extension: label, then data sub-blocks
            i = skip_sub_blocks(i + 1)
        elif block == 0x2C and i + 9 <= n:  # image descriptor: left, top, width, height, flags
            fw, fh, fflags = struct.unpack_from("<HHB", d, i + 4)
            i += 9 + (3 << ((fflags & 7) + 1) if fflags & 0x80 else 0)
            i = skip_sub_blocks(i + 1)  # LZW minimum code size, then the raster
            frames += 1
            area += fw * fh
            widest, tallest = max(widest, fw), max(tallest, fh)
        else:  # trailer (0x3B), a cut-off descriptor or a byte giflib would refuse: the end
            break
    if frames:  # TensorFlow's picture is as big as the largest frame, whatever the screen
        width, height = widest, tallest
    _positive("GIF", width, height)
    pixels = max(width * height, area, screen)
    return ImageSize("gif", width, height, max(frames, 1), pixels)


def _bmp(d: bytes) -> ImageSize:
    # read as TensorFlow's decoder reads it, whatever the DIB header size says: signed 32-bit
    # width and height (negative height: rows stored top-down)
    width, height = struct.unpack_from("<ii", d, 18)
    _positive("BMP", width, abs(height))
    return ImageSize("bmp", width, abs(height))
