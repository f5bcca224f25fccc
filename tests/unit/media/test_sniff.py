import pytest

from glimpse.media import sniff_format

from ._images import animated, solid


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_real_files_of_each_raster_format_are_named(fmt):
    assert sniff_format(solid(fmt)) == fmt


def test_animated_webp_is_still_webp():
    assert sniff_format(animated("WEBP")) == "WEBP"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
        (b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>', "SVG"),
        (b'\xef\xbb\xbf  <?xml version="1.0"?>\n<!-- x -->\n<svg width="10"/>', "SVG"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "HTML"),
        (b"\n\n  <HTML><script>alert(1)</script>", "HTML"),
        (b'<?xml version="1.0"?><note/>', "XML"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00", "AVIF"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIF"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"", None),
        (b"\xff\xd8", None),
        (b"just some text", None),
    ],
)
def test_magic_numbers_and_markup(data, expected):
    assert sniff_format(data) == expected


def test_the_name_of_an_upload_is_never_consulted():
    # A PNG is a PNG whatever it was called; the function only sees bytes.
    assert sniff_format(solid("PNG")) == "PNG"
    assert sniff_format(b"\xff\xd8\xff<html>not really</html>") == "JPEG"
