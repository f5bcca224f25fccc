"""Print the README's table of the shipped tiny model's answers about docs/examples/ (real answers).

    .venv/bin/python scripts/readme_examples.py

Each picture goes through Glimpse's decoder, the checkpoint's chat template and processor,
and a greedy ``generate`` — what ``glimpse serve --model tiny`` answers on ``/infer``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from glimpse.config import MediaSettings
from glimpse.engine.tiny_data import chat_messages, prompt_inputs
from glimpse.engine.tiny_model import shipped_tiny_model_dir
from glimpse.engine.tiny_task import Question
from glimpse.media.decode import decode_image

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
ASKED = [
    (
        "red-circle.png",
        "a red circle on the left",
        ["What color is the shape?", "Where is the shape?", "描述这张图片。"],
    ),
    (
        "blue-squares.jpg",
        "3 blue squares",
        ["How many shapes are there?", "Describe the image.", "这是什么形状？"],
    ),
    (
        "yellow-triangle.webp",
        "a yellow triangle at the top",
        ["图中图形是什么颜色？", "图形在哪里？", "What shape is it?", "What is the capital of France?"],
    ),
]


def main() -> None:
    directory = shipped_tiny_model_dir()
    model = AutoModelForImageTextToText.from_pretrained(directory).eval()
    processor = AutoProcessor.from_pretrained(directory)
    print("| picture (what it shows) | question | answer |")  # noqa: T201
    print("|---|---|---|")  # noqa: T201
    for name, shows, questions in ASKED:
        image = decode_image((EXAMPLES / name).read_bytes(), MediaSettings()).image
        for text in questions:
            prompt = prompt_inputs(processor, chat_messages(1, [Question("color", "en", text)], []))
            inputs = processor(text=[prompt], images=[image], return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
            new = out[0, inputs["input_ids"].shape[1] :]
            answer = processor.tokenizer.decode(new, skip_special_tokens=True).strip()
            print(f"| [{name}](docs/examples/{name}) ({shows}) | {text} | {answer} |")  # noqa: T201


if __name__ == "__main__":
    main()
