import base64
import io
import json

import pytest
from PIL import Image

from glimpse.client.bench_inputs import (
    BenchInput,
    RequestOptions,
    directory_inputs,
    synthetic_image,
    synthetic_inputs,
)
from glimpse.config import MediaSettings
from glimpse.media.decode import decode_image


def decode(body: bytes):
    obj = json.loads(body)
    content = obj["messages"][0]["content"]
    url = content[0]["image_url"]["url"]
    header, data = url.split(",", 1)
    return obj, header, base64.b64decode(data), content[1]["text"]


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_synthetic_images_are_seeded_and_sized(fmt):
    a = synthetic_image(64, seed=1, fmt=fmt)
    assert a == synthetic_image(64, seed=1, fmt=fmt)
    assert a != synthetic_image(64, seed=2, fmt=fmt)
    image = Image.open(io.BytesIO(a))
    assert image.size == (64, 64)
    assert image.format == fmt.upper()


def test_same_image_bodies_follow_the_seed_and_never_change():
    options = RequestOptions("m", 16)
    one, same, other = (synthetic_inputs([32], options, seed=seed, same_image=True)[0] for seed in (1, 1, 2))
    assert one.body_for(0) == one.body_for(7) == same.body_for(3) != other.body_for(0)
    assert decode(one.body_for(5))[2] == synthetic_image(32, seed=1)


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_every_request_gets_its_own_image_by_default(fmt):
    options = RequestOptions("m", 16)
    one, same, other = (synthetic_inputs([72], options, seed=seed, fmt=fmt)[0] for seed in (1, 1, 2))
    images = [decode(one.body_for(i))[2] for i in range(6)]
    assert len(set(images)) == 6
    pixels = {decode_image(image, MediaSettings()).image.tobytes() for image in images}
    assert len(pixels) == 6  # not just the bytes: a cache keyed by pixels misses too
    assert [one.body_for(i) for i in (0, 5)] == [same.body_for(i) for i in (0, 5)]
    assert all(one.body_for(i) != other.body_for(i) for i in (0, 5))


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_varying_images_share_the_noise_above_their_stripe(fmt):
    (varying,) = synthetic_inputs([40], RequestOptions("m", 16), seed=3, fmt=fmt)
    plain = Image.open(io.BytesIO(synthetic_image(40, seed=3, fmt=fmt))).convert("RGB")
    image = Image.open(io.BytesIO(decode(varying.body_for(9))[2]))
    assert (image.format, image.size) == (fmt.upper(), (40, 40))
    if fmt == "png":  # lossless: the rows above the 8-row stripe are the plain image's, exactly
        row = 40 * 3
        assert image.tobytes()[: 32 * row] == plain.tobytes()[: 32 * row]
        assert image.tobytes()[32 * row :] != plain.tobytes()[32 * row :]


@pytest.mark.parametrize("same_image", [False, True])
def test_synthetic_bodies_follow_the_options(same_image):
    options = RequestOptions("m", 16, ignore_eos=False, temperature=0.7)
    (one,) = synthetic_inputs([32], options, fmt="png", question="What?", same_image=same_image)
    obj, header, data, text = decode(one.body_for(1))
    assert one.label == "noise-32px"
    assert isinstance(one, BenchInput) == same_image
    assert header == "data:image/png;base64"
    assert Image.open(io.BytesIO(data)).size == (32, 32)
    assert (obj["max_tokens"], obj["temperature"], "ignore_eos" in obj) == (16, 0.7, False)
    assert obj["stream_options"] == {"include_usage": True}
    assert text == "What?"


def test_directory_inputs_pair_sorted_images_with_cycled_questions(tmp_path):
    for name in ["b.png", "a.jpg", "skip.txt"]:
        (tmp_path / name).write_bytes(name.encode())
    questions = tmp_path / "q.txt"
    questions.write_text("first?\n\nsecond?\nthird?\n")
    inputs = directory_inputs(tmp_path, RequestOptions("m", 8), questions_file=questions)
    decoded = [decode(i.body) for i in inputs]
    assert [i.label for i in inputs] == ["a.jpg", "b.png", "a.jpg"]
    assert [d[3] for d in decoded] == ["first?", "second?", "third?"]
    assert [d[1] for d in decoded] == [
        "data:image/jpeg;base64",
        "data:image/png;base64",
        "data:image/jpeg;base64",
    ]
    assert decoded[1][2] == b"b.png"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .jpg"):
        directory_inputs(empty, RequestOptions("m", 8))
