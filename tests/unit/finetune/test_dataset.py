"""Reading a fine-tuning dataset: both line shapes, and every bad line named by file and line."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from glimpse.finetune.dataset import DatasetError, read_dataset, split


def _png(colour=(200, 30, 30), size=(40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def _write(tmp_path, lines) -> object:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_simple_and_chat_lines_become_the_same_kind_of_example(tmp_path):
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(_png())
    url = "data:image/png;base64," + base64.b64encode(_png((0, 0, 200))).decode()
    path = _write(
        tmp_path,
        [
            {"image": "pics/a.png", "question": "What color?", "answer": "COLOR-RED"},
            "",
            {
                "messages": [
                    {"role": "system", "content": "Answer with a code."},
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": url}},
                            {"type": "text", "text": "Q"},
                        ],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": "COLOR-BLUE"}]},
                ]
            },
        ],
    )
    data = read_dataset(path, "stop")
    assert (data.lines, data.bad) == (2, [])
    first, second = data.examples
    assert first.where == f"{path}:1"
    assert first.answer == "COLOR-RED"
    assert first.messages == [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]}
    ]
    assert first.images[0].getpixel((0, 0)) == (200, 30, 30)
    assert second.where == f"{path}:3"
    assert [m["role"] for m in second.messages] == ["system", "user"]
    assert second.answer == "COLOR-BLUE"
    assert second.images[0].getpixel((5, 5)) == (0, 0, 200)


BAD = [
    ("{not json", "not JSON"),
    ({"image": "missing.png", "question": "Q", "answer": "A"}, "cannot read image"),
    ({"image": "https://example.com/a.png", "question": "Q", "answer": "A"}, "nothing is downloaded"),
    ({"image": "junk.png", "question": "Q", "answer": "A"}, "image"),
    ({"question": "Q", "answer": " "}, "'answer' must be a non-empty string"),
    ({"messages": [{"role": "user", "content": "Q"}, {"role": "user", "content": "Q2"}]}, "last message"),
    (
        {
            "messages": [
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
            ]
        },
        "user messages only",
    ),
]


def test_bad_lines_are_listed_with_file_and_line_and_skipped(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    good = {"question": "What colour?", "answer": "COLOR-RED"}
    path = _write(tmp_path, [good, *(line for line, _ in BAD)])
    data = read_dataset(path, "skip")
    assert len(data.examples) == 1
    assert [bad.where for bad in data.bad] == [f"{path}:{n}" for n in range(2, 2 + len(BAD))]
    for bad, (_, reason) in zip(data.bad, BAD, strict=True):
        assert reason in bad.reason


def test_stop_names_the_first_bad_line(tmp_path):
    path = _write(tmp_path, [{"question": "Q", "answer": "A"}, "[1, 2]"])
    with pytest.raises(DatasetError, match=rf"{path}:2: expected a JSON object"):
        read_dataset(path, "stop")


@pytest.mark.parametrize("lines", [[], ["{oops"], [{"question": "Q"}]])
def test_never_an_empty_dataset(tmp_path, lines):
    path = _write(tmp_path, lines)
    with pytest.raises(DatasetError, match="nothing to train on"):
        read_dataset(path, "skip")


def test_the_split_is_seeded_and_never_leaves_nothing_to_train_on(tmp_path):
    path = _write(tmp_path, [{"question": f"Q{i}", "answer": f"A{i}"} for i in range(10)])
    examples = read_dataset(path, "stop").examples
    train, held = split(examples, 0.2, seed=3)
    assert (len(train), len(held)) == (8, 2)
    assert [e.answer for e in held] == [e.answer for e in split(examples, 0.2, seed=3)[1]]
    assert split(examples, 0.0, seed=3)[1] == []
    with pytest.raises(DatasetError):
        split(examples[:1], 0.5, seed=0)
