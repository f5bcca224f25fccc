import pytest
from PIL import Image

from glimpse.media.colour import to_rgb


def _pixel(image: Image.Image) -> tuple[int, ...]:
    value = image.getpixel((0, 0))
    assert isinstance(value, tuple)
    return value


@pytest.mark.parametrize(
    ("mode", "colour", "expected"),
    [
        ("RGB", (10, 20, 30), (10, 20, 30)),
        ("L", 128, (128, 128, 128)),
        ("1", 1, (255, 255, 255)),
        ("CMYK", (255, 0, 0, 0), (0, 255, 255)),
        ("CMYK", (0, 0, 0, 255), (0, 0, 0)),
        ("YCbCr", (255, 128, 128), (255, 255, 255)),
        ("RGBA", (255, 0, 0, 255), (255, 0, 0)),
        ("RGBA", (255, 0, 0, 0), (255, 255, 255)),
        ("RGBA", (0, 0, 0, 0), (255, 255, 255)),
        ("LA", (0, 0), (255, 255, 255)),
        ("LA", (0, 255), (0, 0, 0)),
        ("I;16", 65535, (255, 255, 255)),
        ("I;16", 40000, (156, 156, 156)),
        ("I;16", 200, (1, 1, 1)),
        ("I;16B", 40000, (156, 156, 156)),
        ("I", 40000, (156, 156, 156)),
        ("I", 100, (100, 100, 100)),
        ("F", 0.5, (128, 128, 128)),
    ],
)
def test_modes_convert_to_rgb_correctly(mode, colour, expected):
    result = to_rgb(Image.new(mode, (2, 2), colour))
    assert result.mode == "RGB"
    assert _pixel(result) == pytest.approx(expected, abs=1)


def test_half_transparent_red_is_composited_onto_white():
    assert _pixel(to_rgb(Image.new("RGBA", (1, 1), (255, 0, 0, 128)))) == pytest.approx(
        (255, 127, 127), abs=1
    )


def test_wide_range_integer_grey_is_normalised_not_clipped():
    image = Image.new("I", (2, 1))
    image.putpixel((0, 0), -100_000)
    image.putpixel((1, 0), 100_000)
    result = to_rgb(image)
    assert result.getpixel((0, 0)) == (0, 0, 0)
    assert result.getpixel((1, 0)) == (255, 255, 255)


def test_palette_with_transparent_index_becomes_white_there():
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1
    result = to_rgb(image)
    assert result.getpixel((0, 0)) == (255, 0, 0)
    assert result.getpixel((1, 0)) == (255, 255, 255)


def test_palette_without_transparency_keeps_its_colours():
    image = Image.new("P", (1, 1))
    image.putpalette([0, 200, 0] + [0] * 765)
    assert _pixel(to_rgb(image)) == (0, 200, 0)


def test_grey_with_transparent_key_becomes_white_there():
    image = Image.new("L", (2, 1), 50)
    image.putpixel((1, 0), 0)
    image.info["transparency"] = 0
    result = to_rgb(image)
    assert result.getpixel((0, 0)) == (50, 50, 50)
    assert result.getpixel((1, 0)) == (255, 255, 255)


def test_result_is_a_new_object_without_metadata():
    source = Image.new("RGB", (2, 2), (1, 2, 3))
    source.info.update({"exif": b"Exif\x00\x00junk", "icc_profile": b"icc", "comment": b"hello"})
    result = to_rgb(source)
    assert result is not source
    assert result.info == {}
    assert source.info["comment"] == b"hello"
    result.putpixel((0, 0), (9, 9, 9))
    assert source.getpixel((0, 0)) == (1, 2, 3)
