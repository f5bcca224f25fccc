import base64
import hashlib
import threading
import time

import anyio
import pytest

from glimpse.config import MediaSettings
from glimpse.errors import ImageTooLarge, InvalidImage, InvalidRequest, UnsupportedMediaType
from glimpse.media import DecodedImage, ImageIntake

from ._images import animated, solid

PNG = solid("PNG", size=(20, 10))
PNG_B64 = base64.b64encode(PNG).decode()


@pytest.fixture
def intake():
    return ImageIntake(MediaSettings())


async def test_from_bytes_returns_a_decoded_image(intake):
    result = await intake.from_bytes(PNG)
    assert isinstance(result, DecodedImage)
    assert result.sha256 == hashlib.sha256(PNG).hexdigest()
    assert (result.format, result.width, result.height, result.source_bytes) == ("PNG", 20, 10, len(PNG))


async def test_from_base64_accepts_plain_base64_and_data_urls(intake):
    plain = await intake.from_base64(PNG_B64)
    from_url = await intake.from_base64(f"data:image/png;base64,{PNG_B64}")
    assert plain.sha256 == from_url.sha256 == hashlib.sha256(PNG).hexdigest()


@pytest.mark.parametrize(
    "ref",
    [PNG_B64, f"data:image/png;base64,{PNG_B64}", f"  data:image/png;base64,{PNG_B64}\n"],
)
async def test_from_reference_routes_each_kind(intake, ref):
    assert (await intake.from_reference(ref)).format == "PNG"


async def test_declared_mime_is_ignored_for_type_detection(intake):
    # A PNG labelled as JPEG (or as text) is still a PNG...
    assert (await intake.from_reference(f"data:image/jpeg;base64,{PNG_B64}")).format == "PNG"
    assert (await intake.from_reference(f"data:text/plain;base64,{PNG_B64}")).format == "PNG"
    # ...and a GIF labelled PNG is still a GIF, refused by default.
    gif = base64.b64encode(animated("GIF")).decode()
    with pytest.raises(UnsupportedMediaType, match="GIF images are not accepted"):
        await intake.from_reference(f"data:image/png;base64,{gif}")


@pytest.mark.parametrize(
    ("ref", "error", "match"),
    [
        ("data:image/png,notbase64", InvalidImage, "data URL is malformed"),
        ("data:image/png;base64,%%%%", InvalidImage, "not valid base64"),
        ("iVBORw0KGgo$", InvalidImage, "not valid base64"),
        ("", InvalidImage, "empty"),
        (base64.b64encode(b"GIF89a" + b"\x00" * 30).decode(), UnsupportedMediaType, "GIF"),
        (base64.b64encode(b"<svg onload=alert(1)>").decode(), UnsupportedMediaType, "SVG"),
        ("javascript:alert(1)", InvalidImage, "javascript: URLs are not accepted"),
        ("file:///etc/passwd", InvalidImage, "file: URLs are not accepted"),
    ],
)
async def test_bad_references(intake, ref, error, match):
    with pytest.raises(error, match=match):
        await intake.from_reference(ref)


async def test_url_without_a_client_is_refused_even_if_enabled():
    intake = ImageIntake(MediaSettings(allow_urls=True))
    with pytest.raises(InvalidImage, match="cannot be fetched"):
        await intake.from_reference("https://img.example.com/a.png")


async def test_oversize_base64_is_refused_before_decoding():
    limit = len(PNG) - 3  # 3 fewer bytes is at least one base64 quantum shorter
    intake = ImageIntake(MediaSettings(max_image_bytes=limit))
    with pytest.raises(ImageTooLarge, match=f"larger than {limit} bytes"):
        await intake.from_base64(PNG_B64)


def test_check_count(intake):
    intake.check_count(0)
    intake.check_count(4)
    with pytest.raises(InvalidRequest, match="5 images; at most 4") as caught:
        intake.check_count(5)
    assert caught.value.status_code == 400


async def test_decoding_runs_off_the_event_loop_and_is_bounded(monkeypatch):
    import glimpse.media.intake as intake_module

    loop_thread = threading.get_ident()
    active = 0
    peak = 0
    seen_threads = set()
    lock = threading.Lock()
    real_decode = intake_module.decode_image

    def slow_decode(data, settings):
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
            seen_threads.add(threading.get_ident())
        time.sleep(0.02)
        with lock:
            active -= 1
        return real_decode(data, settings)

    monkeypatch.setattr(intake_module, "decode_image", slow_decode)
    intake = ImageIntake(MediaSettings(), max_threads=2)
    results = []

    async def one():
        results.append(await intake.from_bytes(PNG))

    async with anyio.create_task_group() as group:
        for _ in range(6):
            group.start_soon(one)
    assert len(results) == 6
    assert peak == 2
    assert loop_thread not in seen_threads


async def test_intake_survives_bad_input_and_serves_the_next_good_one(intake):
    for bad in (b"", b"\xff\xd8\xff" + b"\x00" * 50, PNG[:40], b"<html>"):
        with pytest.raises((InvalidImage, UnsupportedMediaType)):
            await intake.from_bytes(bad)
    assert (await intake.from_bytes(PNG)).format == "PNG"


async def test_base64_parsing_also_runs_in_a_worker_thread(monkeypatch):
    import glimpse.media.intake as intake_module

    threads = []
    real = intake_module.decode_base64

    def recording(payload, max_bytes):
        threads.append(threading.get_ident())
        return real(payload, max_bytes)

    monkeypatch.setattr(intake_module, "decode_base64", recording)
    await ImageIntake(MediaSettings()).from_reference(f"data:image/png;base64,{PNG_B64}")
    assert threads
    assert threading.get_ident() not in threads
