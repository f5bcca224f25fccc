import hashlib
import time
import warnings

import pytest
from PIL import Image

from glimpse.config import MediaSettings
from glimpse.errors import ImageTooLarge, InvalidImage, UnsupportedMediaType
from glimpse.media.decode import configure_pillow, decode_image

from ._images import BLUE, RED, animated, compressed_chunk, encode, half_red_half_blue, png_bomb, solid

SETTINGS = MediaSettings()


@pytest.fixture(autouse=True)
def _pillow_configured():
    configure_pillow(SETTINGS.max_pixels)


def _close(actual, expected, tolerance=12):
    return all(abs(a - b) <= tolerance for a, b in zip(actual, expected, strict=True))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_allowed_formats_decode_to_plain_rgb(fmt):
    data = solid(fmt, size=(32, 24))
    result = decode_image(data, SETTINGS)
    assert result.format == fmt
    assert (result.width, result.height) == (32, 24) == result.image.size
    assert result.image.mode == "RGB"
    assert result.source_bytes == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert _close(result.image.getpixel((5, 5)), RED)


@pytest.mark.parametrize(
    ("image", "fmt", "expected"),
    [
        (Image.new("I;16", (16, 16), 65535), "PNG", (255, 255, 255)),
        (Image.new("LA", (16, 16), (0, 0)), "PNG", (255, 255, 255)),
        (Image.new("RGBA", (16, 16), (0, 0, 255, 0)), "PNG", (255, 255, 255)),
        (Image.new("RGBA", (16, 16), (0, 0, 255, 0)), "WEBP", (255, 255, 255)),
        (Image.new("CMYK", (16, 16), (0, 255, 0, 0)), "JPEG", (255, 0, 255)),
        (Image.new("L", (16, 16), 77), "JPEG", (77, 77, 77)),
        (Image.new("1", (16, 16), 1), "PNG", (255, 255, 255)),
    ],
)
def test_file_modes_come_out_right(image, fmt, expected):
    result = decode_image(encode(image, fmt), SETTINGS)
    assert result.image.mode == "RGB"
    assert _close(result.image.getpixel((8, 8)), expected)


def test_palette_png_with_transparency_round_trips():
    image = Image.new("P", (16, 16), 1)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(0, (0, 0, 8, 16))
    result = decode_image(encode(image, "PNG", transparency=1), SETTINGS)
    assert result.image.getpixel((2, 2)) == RED
    assert result.image.getpixel((12, 2)) == (255, 255, 255)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_exif_orientation_is_applied(fmt):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    data = encode(half_red_half_blue((40, 20)), fmt, exif=exif.tobytes())
    result = decode_image(data, SETTINGS)
    assert (result.width, result.height) == (20, 40)
    assert _close(result.image.getpixel((10, 5)), RED)
    assert _close(result.image.getpixel((10, 35)), BLUE)


def test_metadata_is_stripped():
    exif = Image.Exif()
    exif[0x010F] = "SecretCam"  # Make
    exif[0x0112] = 1
    data = encode(
        Image.new("RGB", (16, 16), RED), "JPEG", exif=exif.tobytes(), icc_profile=b"\x00" * 128, comment=b"hi"
    )
    image = decode_image(data, SETTINGS).image
    assert image.info == {}
    assert dict(image.getexif()) == {}


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_images_use_the_first_frame(fmt):
    result = decode_image(animated(fmt, (RED, BLUE)), SETTINGS)
    assert _close(result.image.getpixel((8, 8)), RED)


def test_gif_is_refused_by_default_but_can_be_allowed():
    data = animated("GIF", (BLUE, RED))
    with pytest.raises(UnsupportedMediaType, match="GIF images are not accepted"):
        decode_image(data, SETTINGS)
    result = decode_image(data, MediaSettings(allowed_formats=("GIF",)))
    assert result.format == "GIF"
    assert _close(result.image.getpixel((8, 8)), BLUE)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>', "SVG images are not accepted"),
        (b"<!doctype html><html><script>alert(1)</script></html>", "HTML images are not accepted"),
        (b"%PDF-1.4\n1 0 obj<<>>endobj\n", "PDF images are not accepted"),
        (solid("BMP"), "BMP images are not accepted"),
        (solid("TIFF"), "TIFF images are not accepted"),
        (bytes(range(256)) * 8, "not a recognised image"),
        (b"<html>" + solid("PNG"), "HTML images are not accepted"),
        (b"\xff\xd8\xff\xe0<html><script>alert(1)</script></html>", "not a well-formed JPEG image"),
        (b"\x89PNG\r\n\x1a\n<html></html>", "not a well-formed PNG image"),
        (b"RIFF\x10\x00\x00\x00WEBP<svg onload=alert(1)>", "not a well-formed WEBP image"),
    ],
)
def test_wrong_types_and_polyglots_get_415(data, match):
    with pytest.raises(UnsupportedMediaType, match=match) as caught:
        decode_image(data, SETTINGS)
    assert caught.value.status_code == 415


def test_valid_jpeg_header_with_html_instead_of_pixels_is_a_polyglot_415():
    data = solid("JPEG", size=(64, 64))
    header = data[: data.index(b"\xff\xda")]  # everything before the scan
    with pytest.raises(UnsupportedMediaType, match="contains markup"):
        decode_image(header + b"\xff\xda<html><body><script>alert(1)</script></body></html>", SETTINGS)


@pytest.mark.parametrize(
    "magic", [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"RIFF\x10\x00\x00\x00WEBPVP8 "]
)
def test_allowed_magic_followed_by_garbage_is_a_corrupt_image_400(magic):
    with pytest.raises(InvalidImage, match="corrupt or truncated") as caught:
        decode_image(magic + bytes(range(256)), SETTINGS)
    assert caught.value.status_code == 400


def test_png_with_trailing_html_decodes_as_the_png_it_is():
    # Only pixels go on to the model; the trailing bytes are never served back.
    result = decode_image(solid("PNG") + b"<html><script>alert(1)</script></html>", SETTINGS)
    assert result.format == "PNG"


def test_empty_input_is_invalid():
    with pytest.raises(InvalidImage, match="empty"):
        decode_image(b"", SETTINGS)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_truncated_files_are_invalid_not_500(fmt):
    noisy = Image.effect_noise((64, 64), 64).convert("RGB")
    data = encode(noisy, fmt)
    with pytest.raises(InvalidImage, match=f"The {fmt} image is (truncated|corrupt)") as caught:
        decode_image(data[: len(data) * 2 // 3], SETTINGS)
    assert caught.value.status_code == 400


def test_png_with_corrupted_pixel_data_is_invalid():
    data = bytearray(encode(Image.effect_noise((64, 64), 64), "PNG"))
    start = data.index(b"IDAT") + 20
    data[start : start + 16] = b"\xff" * 16
    with pytest.raises(InvalidImage, match="corrupt"):
        decode_image(bytes(data), SETTINGS)


def test_oversize_bytes_refused_before_decoding():
    data = solid("PNG", size=(64, 64))
    with pytest.raises(ImageTooLarge, match=f"The image is {len(data)} bytes; the limit is 100 bytes"):
        decode_image(data, MediaSettings(max_image_bytes=100))


@pytest.mark.parametrize(
    ("width", "height"),
    [(7_000, 7_000), (10_000, 10_000), (100_000, 100_000), (2**31 - 1, 2**31 - 1)],
    ids=["over-our-limit", "pillow-warning-range", "pillow-error-range", "max-ihdr"],
)
def test_decompression_bombs_refused_from_the_header_quickly(width, height):
    data = png_bomb(width, height)
    assert len(data) < 200
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLarge, match="pixels"):
            decode_image(data, SETTINGS)
    assert time.perf_counter() - started < 0.5


def test_bomb_message_names_the_size_when_our_check_fires():
    with pytest.raises(ImageTooLarge, match="7000x7000 = 49000000 pixels; the limit is 40000000"):
        decode_image(png_bomb(7_000, 7_000), SETTINGS)


def test_side_and_pixel_limits():
    settings = MediaSettings(max_side=64, min_side=8, max_pixels=2_000)
    with pytest.raises(ImageTooLarge, match="neither side may be longer than 64") as too_long:
        decode_image(solid("PNG", size=(65, 8)), settings)
    assert too_long.value.status_code == 413
    with pytest.raises(ImageTooLarge, match="the limit is 2000 pixels"):
        decode_image(solid("PNG", size=(50, 50)), settings)
    with pytest.raises(InvalidImage, match="at least 8 pixels") as too_small:
        decode_image(solid("PNG", size=(40, 7)), settings)
    assert too_small.value.status_code == 400
    assert decode_image(solid("PNG", size=(64, 8)), settings).width == 64


def test_ten_thousand_by_one_is_refused():
    with pytest.raises(ImageTooLarge, match="10000x1"):
        decode_image(png_bomb(10_000, 1), SETTINGS)


def test_configure_pillow_raises_pillow_limit_to_ours(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000)
    configure_pillow(5_000)
    assert Image.MAX_IMAGE_PIXELS == 5_000
    configure_pillow(100)
    assert Image.MAX_IMAGE_PIXELS == 5_000
    # Pillow's warning range (5000 < n <= 10000) must surface as our error, not a warning.
    settings = MediaSettings(max_pixels=100_000, max_side=8192)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)
    with pytest.raises(ImageTooLarge):
        decode_image(solid("PNG", size=(90, 90)), settings)


@pytest.mark.parametrize("kind", [b"zTXt", b"iCCP"])
def test_png_with_huge_compressed_metadata_chunk_is_refused_quickly(kind):
    data = png_bomb(16, 16, extra_chunks=compressed_chunk(kind, b"k", 50_000_000))
    assert len(data) < 100_000
    started = time.perf_counter()
    with pytest.raises(InvalidImage, match="compressed metadata chunk that expands too far"):
        decode_image(data, SETTINGS)
    assert time.perf_counter() - started < 0.5


def test_png_whose_pixel_data_inflates_far_past_the_canvas_is_bounded():
    # 20 MB of zeros for a 16x16 canvas: the decoder stops when the canvas is full.
    data = png_bomb(16, 16, pixel_bytes=20_000_000)
    started = time.perf_counter()
    result = decode_image(data, SETTINGS)
    assert (result.width, result.height) == (16, 16)
    assert time.perf_counter() - started < 0.5
