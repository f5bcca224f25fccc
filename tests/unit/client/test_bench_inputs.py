import base64
import io
import json

import pytest
from PIL import Image

from glimpse.client.bench_inputs import RequestOptions, directory_inputs, synthetic_image, synthetic_inputs


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


def test_synthetic_bodies_follow_the_seed():
    options = RequestOptions("m", 16)
    one, same, other = (synthetic_inputs([32], options, seed=seed)[0].body for seed in (1, 1, 2))
    assert one == same != other


def test_synthetic_bodies_follow_the_options():
    options = RequestOptions("m", 16, ignore_eos=False, temperature=0.7)
    (one,) = synthetic_inputs([32], options, fmt="png")
    obj, header, data, text = decode(one.body)
    assert one.label == "noise-32px"
    assert header == "data:image/png;base64"
    assert Image.open(io.BytesIO(data)).size == (32, 32)
    assert (obj["max_tokens"], obj["temperature"], "ignore_eos" in obj) == (16, 0.7, False)
    assert text


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
