import io
import random
import struct
import zlib

import pytest
from PIL import Image

from glimpse.client.bench_images import STRIPE_ROWS, striped_image

SIZES = [1, 16, 17, 40, 72, 130]


def noise(width, height, seed):
    return Image.frombytes("RGB", (width, height), random.Random(seed).randbytes(width * height * 3))


def with_stripe(base, striped, stripe_rgb):
    image = base.copy()
    image.paste(
        Image.frombytes("RGB", (base.width, striped.stripe_height), stripe_rgb), (0, striped.stripe_top)
    )
    return image


def png_idat(data):
    """The concatenated IDAT payloads, checking every chunk's CRC on the way."""
    pos, payload = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        if kind == b"IDAT":
            payload += body
        pos += 12 + length
    assert kind == b"IEND"
    return payload


@pytest.mark.parametrize("size", SIZES)
def test_jpeg_splice_is_what_pillow_writes_for_the_whole_image(size):
    base = noise(size, size, size)
    striped = striped_image(base, "jpeg")
    assert striped.stripe_top % STRIPE_ROWS == 0
    assert 1 <= striped.stripe_height <= STRIPE_ROWS
    assert striped.stripe_top + striped.stripe_height == size
    stripe = random.Random(-size).randbytes(striped.stripe_bytes)
    buf = io.BytesIO()
    with_stripe(base, striped, stripe).save(
        buf, format="JPEG", quality=90, subsampling="4:2:0", restart_marker_rows=1
    )
    assert striped.encode(stripe) == buf.getvalue()


@pytest.mark.parametrize("size", SIZES)
def test_png_decodes_to_the_base_with_the_new_stripe(size):
    base = noise(size, size, size)
    striped = striped_image(base, "png")
    stripe = random.Random(-size).randbytes(striped.stripe_bytes)
    data = striped.encode(stripe)
    raw = zlib.decompress(png_idat(data))  # checks the continued Adler-32
    assert len(raw) == size * (size * 3 + 1)
    image = Image.open(io.BytesIO(data))
    assert (image.format, image.size, image.mode) == ("PNG", (size, size), "RGB")
    assert image.tobytes() == with_stripe(base, striped, stripe).tobytes()


def test_png_stripe_wider_than_one_stored_block():
    width = 2000  # 16 rows of 6001 bytes: two stored deflate blocks
    base = noise(width, 32, 1)
    striped = striped_image(base, "png")
    stripe = random.Random(2).randbytes(striped.stripe_bytes)
    assert striped.stripe_bytes > 0xFFFF
    data = striped.encode(stripe)
    zlib.decompress(png_idat(data))
    assert Image.open(io.BytesIO(data)).tobytes() == with_stripe(base, striped, stripe).tobytes()


def test_bad_inputs_are_refused():
    striped = striped_image(noise(8, 8, 0), "jpeg")
    with pytest.raises(ValueError, match="stripe is"):
        striped.tail(b"short")
    with pytest.raises(ValueError, match="unknown image format"):
        striped_image(noise(8, 8, 0), "gif")
    with pytest.raises(ValueError, match="RGB"):
        striped_image(Image.new("L", (8, 8)), "png")
