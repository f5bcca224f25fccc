import asyncio
import base64
import hashlib
import io
import threading
import time

import anyio
import pytest
from PIL import Image

from glimpse.config import MediaSettings
from glimpse.errors import ImageTooLarge, InvalidImage, InvalidRequest, Overloaded, UnsupportedMediaType
from glimpse.media import DecodedImage, ImageIntake, probe_image

from ._images import animated, encode, png_bomb, solid

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


# -- decode_all: a request's images sized from their headers, then decoded under the pixel budget


def _spy_decodes(monkeypatch):
    """Count real decodes (probing headers is not decoding)."""
    import glimpse.media.intake as intake_module

    calls = []
    real = intake_module.decode_image

    def spy(data, settings):
        calls.append(len(data))
        return real(data, settings)

    monkeypatch.setattr(intake_module, "decode_image", spy)
    return calls


async def test_decode_all_refuses_a_request_over_its_pixel_total_before_decoding_any_image(monkeypatch):
    """F5: four large images in a small body were all decoded before the request was refused."""
    decodes = _spy_decodes(monkeypatch)
    intake = ImageIntake(MediaSettings(max_request_pixels=10_000))
    small = solid("PNG", size=(50, 50))  # 2,500 pixels: decoding this one first would be too late
    large = png_bomb(100, 80)  # 8,000 pixels, under the per-image limit
    with pytest.raises(ImageTooLarge, match="10500 pixels in all; the limit is 10000"):
        await intake.decode_all([small, large])
    assert decodes == []
    assert intake.budget.in_use == 0


async def test_decode_all_refuses_an_oversized_image_anywhere_in_the_request_before_decoding(monkeypatch):
    decodes = _spy_decodes(monkeypatch)
    intake = ImageIntake(MediaSettings(max_pixels=5_000))
    with pytest.raises(ImageTooLarge):
        await intake.decode_all([solid("PNG", size=(20, 20)), png_bomb(100, 80)])
    assert decodes == []


async def test_decode_all_holds_the_pixels_until_free_closes_the_images(intake):
    batch = await intake.decode_all([PNG, solid("PNG", size=(8, 8))])
    assert [d.image.size for d in batch.images] == [(20, 10), (8, 8)]
    assert batch.pixels == 20 * 10 + 8 * 8
    assert intake.budget.in_use == batch.pixels
    batch.free()
    assert intake.budget.in_use == 0
    for decoded in batch.images:  # the pixel buffers are gone, whoever still holds the objects
        with pytest.raises(ValueError, match="closed image"):
            decoded.image.getpixel((0, 0))
    batch.release()  # idempotent
    assert intake.budget.in_use == 0


async def test_release_returns_the_budget_and_keeps_the_images(intake):
    batch = await intake.decode_all([PNG])
    batch.release()
    assert intake.budget.in_use == 0
    assert batch.images[0].image.getpixel((0, 0)) == (255, 0, 0)


async def test_decode_all_waits_for_room_and_gives_up_at_the_deadline_with_503():
    intake = ImageIntake(MediaSettings(max_pixels_in_flight=300, max_request_pixels=300, pixel_wait_s=30))
    held = await intake.decode_all([PNG])  # 200 of 300
    started = time.monotonic()
    with pytest.raises(Overloaded) as caught:
        await intake.decode_all([PNG], deadline=time.monotonic() + 0.1)
    assert time.monotonic() - started < 5  # the request's deadline, not pixel_wait_s
    assert caught.value.retry_after
    waiter = asyncio.create_task(intake.decode_all([PNG]))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    held.free()
    batch = await asyncio.wait_for(waiter, 5)
    batch.free()
    assert intake.budget.in_use == 0


async def test_a_failed_decode_returns_the_whole_lease():
    intake = ImageIntake(MediaSettings())
    truncated = png_bomb(100, 80, pixel_bytes=10)  # the header is fine, the pixel data runs out
    with pytest.raises(InvalidImage):
        await intake.decode_all([PNG, truncated])
    assert intake.budget.in_use == 0


@pytest.mark.parametrize(
    "image",
    [
        pytest.param(lambda: Image.new("RGB", (300, 200), (1, 2, 3)), id="lossy-VP8"),
        pytest.param(lambda: Image.new("RGBA", (123, 45), (1, 2, 3, 4)), id="alpha-VP8X"),
    ],
)
@pytest.mark.parametrize("lossless", [False, True])
def test_webp_sizes_are_read_from_the_riff_header_as_pillow_reads_them(image, lossless):
    """WebP's decoder allocates the canvas when it opens, so its size is read without Pillow."""
    data = encode(image(), "WEBP", lossless=lossless)
    header = probe_image(data, MediaSettings())
    assert (header.format, header.width, header.height) == ("WEBP", *Image.open(io.BytesIO(data)).size)


def test_a_webp_without_a_readable_header_is_refused_by_the_probe():
    data = encode(Image.new("RGB", (30, 20)), "WEBP")
    broken = data[:12] + b"VP8Z" + data[16:]
    with pytest.raises((InvalidImage, UnsupportedMediaType)):
        probe_image(broken, MediaSettings())
