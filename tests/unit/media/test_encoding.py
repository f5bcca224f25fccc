import base64

import pytest

from glimpse.errors import ImageTooLarge, InvalidImage
from glimpse.media.encoding import decode_base64, encoded_size_limit, is_data_url, parse_data_url

PAYLOAD = bytes(range(256)) * 3
TEXT = base64.b64encode(PAYLOAD).decode()


def test_standard_base64_decodes():
    assert decode_base64(TEXT, 10_000) == PAYLOAD


def test_line_wrapped_base64_is_tolerated():
    wrapped = base64.encodebytes(PAYLOAD).decode()
    assert "\n" in wrapped
    assert decode_base64(wrapped, 10_000) == PAYLOAD
    assert decode_base64(wrapped.replace("\n", "\r\n"), 10_000) == PAYLOAD


@pytest.mark.parametrize(
    "bad",
    [
        TEXT[:-2],  # padding dropped
        TEXT[:10] + "$" + TEXT[11:],
        TEXT[:10] + " " + TEXT[10:],
        TEXT[:10] + "\t" + TEXT[10:],
        base64.urlsafe_b64encode(b"\xfb\xff\xfe" * 10).decode(),
        "QQ==QQ==",
        "QQ=",
        "A",
        "héllo==",
    ],
)
def test_malformed_base64_is_invalid_image(bad):
    with pytest.raises(InvalidImage, match="not valid base64") as caught:
        decode_base64(bad, 10_000)
    assert caught.value.status_code == 400


@pytest.mark.parametrize("blank", ["", "   ", "\n"])
def test_empty_payload_is_invalid(blank):
    with pytest.raises(InvalidImage, match="empty"):
        decode_base64(blank, 10_000)


def test_oversize_base64_is_refused_from_its_length():
    limit = 3_000
    assert decode_base64(base64.b64encode(b"x" * limit).decode(), limit) == b"x" * limit
    with pytest.raises(ImageTooLarge, match="larger than 3000 bytes"):
        decode_base64(base64.b64encode(b"x" * (limit + 1)).decode(), limit)
    # Refused by length alone: not even valid base64 needs to be looked at.
    with pytest.raises(ImageTooLarge):
        decode_base64("!" * (encoded_size_limit(limit) + 1), limit)


@pytest.mark.parametrize(
    ("url", "mime"),
    [
        (f"data:image/png;base64,{TEXT}", "image/png"),
        (f"DATA:Image/JPEG;BASE64,{TEXT}", "image/jpeg"),
        (f"data:image/webp;name=photo.webp;base64,{TEXT}", "image/webp"),
        (f"data:text/html;charset=utf-8;base64,{TEXT}", "text/html"),
    ],
)
def test_data_urls_parse(url, mime):
    declared, payload = parse_data_url(url)
    assert declared == mime
    assert payload == TEXT


@pytest.mark.parametrize(
    "url",
    [
        f"data:image/png,{TEXT}",  # not base64
        f"data:;base64,{TEXT}",  # no mime
        f"data:image/png;base64{TEXT}",  # no comma
        f"data:image;base64,{TEXT}",  # mime without subtype
        "data:",
        f"data:image/png;bogus;base64,{TEXT}",
    ],
)
def test_malformed_data_urls_are_invalid(url):
    with pytest.raises(InvalidImage, match="data URL is malformed"):
        parse_data_url(url)


def test_is_data_url():
    assert is_data_url("data:image/png;base64,AAAA")
    assert is_data_url("DaTa:x")
    assert not is_data_url("https://example.com/data:")
    assert not is_data_url(TEXT)
