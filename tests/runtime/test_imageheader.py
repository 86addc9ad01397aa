# SPDX-License-Identifier: Apache-2.0
"""Image sizes read from headers: agree with TensorFlow's decoders, refuse bombs, never crash."""

from __future__ import annotations

import functools
import struct

import numpy as np
import pytest
from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from serving_helpers import bmp, gif, gif_claiming, png_claiming

from npusim.runtime.serving.imageheader import (
    DEFAULT_MAX_PIXELS,
    ImageHeaderError,
    ImageSize,
    check_image,
    image_size,
)


@functools.cache
def _tf():
    from npusim.runtime.serving.pipeline import import_tensorflow

    return import_tensorflow()


@functools.cache
def _real_images() -> tuple[bytes, ...]:
    """Small images of every format and flavour, from TensorFlow's encoders or by hand."""
    tf = _tf()
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8)
    return (tf.io.encode_png(rgb).numpy(), tf.io.encode_png(rgb[:, :, :1]).numpy(),
            tf.io.encode_png(rgb.astype(np.uint16) * 257).numpy(),
            tf.io.encode_jpeg(rgb).numpy(), tf.io.encode_jpeg(rgb, progressive=True).numpy(),
            tf.io.encode_jpeg(rgb[:, :, :1], format="grayscale").numpy(),
            gif(7, 5), gif(7, 5, frames=3), bmp(5, 3), bmp(4, 6, top_down=True))


def _decoded_shape(data: bytes) -> tuple[int, int] | None:
    """(height, width) as ``tf.io.decode_image`` gives it, None if it refuses the data."""
    tf = _tf()
    try:
        return tuple(tf.io.decode_image(data, channels=3, expand_animations=False).shape[:2])
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
        return None


@pytest.mark.tf
def test_every_format_agrees_with_tensorflow():
    formats = set()
    for data in _real_images():
        size = image_size(data)
        formats.add(size.format)
        assert _decoded_shape(data) == (size.height, size.width), size
        assert check_image(data) == size
    assert formats == {"png", "jpeg", "gif", "bmp"}


@pytest.mark.tf
def test_jpeg_walk_follows_libjpeg():
    base = _tf().io.encode_jpeg(np.zeros((6, 9, 3), np.uint8)).numpy()
    app = b"\xff\xe1" + struct.pack(">H", 40) + b"\xff\xc0" + bytes(36)  # a fake SOF inside
    dqt = base.index(b"\xff\xdb")
    variants = [
        base[:2] + app + base[2:],  # an APP1 segment (skipped by its length)
        base[:dqt] + b"\xff\xff\xff" + base[dqt:],  # fill bytes before a marker
        base[:dqt] + b"garbage" + base[dqt:],  # bytes before a marker (libjpeg warns, skips)
    ]
    for data in variants:
        assert (image_size(data).width, image_size(data).height) == (9, 6)
        assert _decoded_shape(data) == (6, 9)
    sof = base.index(b"\xff\xc0")
    no_frame = base[:2] + base[base.index(b"\xff\xda"):]  # the scan without a frame header
    dnl = bytearray(base)
    dnl[sof + 5:sof + 7] = b"\0\0"  # height 0: to be given by a DNL marker
    for data, word in ((no_frame, "no frame header"), (bytes(dnl), "empty image"),
                       (base[:sof + 6], "truncated"), (base[:sof], "ends before")):
        with pytest.raises(ImageHeaderError, match=word):
            image_size(data)
        assert _decoded_shape(data) is None


def test_bombs_are_refused_by_their_header():
    bomb = png_claiming(10000, 10000)
    assert len(bomb) < 100 and image_size(bomb) == ImageSize("png", 10000, 10000)
    with pytest.raises(ImageHeaderError, match=r"PNG of 10000x10000 pixels \(100000000 "
                                               r"pixels\) is over the limit of 40000000"):
        check_image(bomb)
    assert check_image(png_claiming(8000, 5000)).pixels == DEFAULT_MAX_PIXELS  # at the limit
    # giflib reads every frame, even when TensorFlow keeps the first
    frames = gif_claiming(300, 300, frames=3)
    assert image_size(frames).frames == 3 and image_size(frames).pixels == 270_000
    with pytest.raises(ImageHeaderError, match=r"in 3 frame\(s\), 270000 pixels decoded"):
        check_image(frames, max_pixels=200_000)
    tall = bytearray(bmp(2, 2))
    struct.pack_into("<i", tall, 22, -(2**31))
    with pytest.raises(ImageHeaderError, match="2147483648"):
        check_image(bytes(tall))


@pytest.mark.parametrize("data, word", [
    (b"", "not an image file"), (b"hello world", "not an image file"),
    (b"\x89PNG\r\n\x1a\n", "truncated"), (b"\x89PNx", "damaged PNG signature"),
    (b"\x89PNG\r\n\x1a\n\0\0\0\x0dIDAT" + bytes(13), "IHDR"), (b"GIF89a\x01", "truncated"),
    (b"BM" + bytes(10), "truncated"), (b"BM" + bytes(30), "empty image"),
    (b"\xff\xd8\xff", "ends before"),
])
def test_unreadable_headers_name_the_problem(data, word):
    with pytest.raises(ImageHeaderError, match=word) as info:
        image_size(data)
    assert "\n" not in str(info.value)


def _check_answer(data: bytes) -> ImageSize | None:
    """image_size(data), asserting that it answers a sane size or refuses with its own error."""
    try:
        size = image_size(data)
    except ImageHeaderError as exc:
        assert "\n" not in str(exc)
        return None
    assert size.width > 0 and size.height > 0 and size.frames >= 1
    assert size.pixels >= size.width * size.height
    return size


@fuzz_settings(300)
@given(st.binary(max_size=64), st.sampled_from([b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n",
                                                b"GIF89a", b"GIF8", b"BM"]))
def test_fuzz_random_bytes(tail, magic):
    _check_answer(magic + tail)


@st.composite
def _mutated(draw) -> bytes:
    """A real image with a few bytes of its header set, inserted, dropped or cut off."""
    data = bytearray(draw(st.sampled_from(_real_images())))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, min(len(data), 96)))
        kind = draw(st.sampled_from(["set", "word", "insert", "delete", "cut"]))
        if kind == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "word" and at + 2 <= len(data):
            data[at:at + 2] = draw(st.sampled_from([b"\0\0", b"\xff\xff", b"\x7f\xff",
                                                    b"\x00\x01", b"\xff\xc0", b"\xff\xda"]))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 8))]
        elif kind == "cut":
            del data[at:]
    return bytes(data)


@pytest.mark.tf
@fuzz_settings(300)
@given(_mutated())
def test_fuzz_mutated_images_against_tensorflow(data):
    """Where TensorFlow decodes a damaged image, the header told its true size: the limit
    cannot be slipped past by a header that says one thing while the pixels say another."""
    size = _check_answer(data)
    if size is None:
        if data[:3] == b"\xff\xd8\xff":  # libjpeg reads a header we refused? (no decoding)
            tf = _tf()
            with pytest.raises(tf.errors.InvalidArgumentError):
                tf.image.extract_jpeg_shape(data)
            return
        assert _decoded_shape(data) is None, "TensorFlow decodes what the parser refused"
        return
    if size.pixels > 4_000_000:
        return  # refused by any sensible limit; not decoded here
    shape = _decoded_shape(data)
    if shape is None:
        return
    if size.format == "gif":
        assert shape[0] * shape[1] <= size.pixels
    else:
        assert shape == (size.height, size.width), size


@pytest.mark.tf
def test_the_preprocessing_stage_checks_headers_before_decoding():
    from npusim.runtime.serving.pipeline import PipelineInputError
    from npusim.runtime.serving.tfstages import preprocess_stage

    tf = _tf()
    stage = preprocess_stage(8, 8, max_pixels=30 * 30)
    small = tf.io.encode_png(np.zeros((20, 30, 3), np.uint8)).numpy()
    assert stage.run({"images": np.array([small], dtype=object)})["images"].shape == (1, 3, 8, 8)
    big = tf.io.encode_png(np.zeros((31, 30, 3), np.uint8)).numpy()
    for data, word in ((big, "PNG of 30x31 pixels"), (png_claiming(10000, 10000), "10000x10000"),
                       (b"junk", "not an image file")):
        with pytest.raises(PipelineInputError, match=f"stage 'preprocess'.*item 1: .*{word}"):
            stage.run({"images": np.array([small, data], dtype=object)})
