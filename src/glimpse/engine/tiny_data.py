"""Turn the tiny task's conversations into model inputs, exactly as the server would.

The images go through Glimpse's own decoder (``glimpse.media.decode_image``: EXIF
orientation, RGB), the text through the checkpoint's chat template and the real
``Glm46VProcessor``. Training labels are the answer tokens (and the end-of-turn
token after them) only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from glimpse.config import MediaSettings
from glimpse.engine.tiny_task import Picture, Question, Sample, draw, encode, make_study_sample
from glimpse.media.decode import decode_image

__all__ = [
    "Encoded",
    "chat_messages",
    "collate",
    "decoded_images",
    "encode_sample",
    "encode_samples",
    "encoded_pool",
    "picture_pool",
    "prompt_inputs",
    "training_text",
]

IGNORE = -100
#: the token a trained answer ends with: GLM-4.6V ends a turn by starting the next one
END_OF_TURN = "<|user|>"


@dataclass(slots=True)
class Encoded:
    """One training conversation, processed: token ids, labels and image patches."""

    input_ids: Any
    labels: Any
    mm_token_type_ids: Any
    pixel_values: Any
    image_grid_thw: Any
    #: what the one picture of a one-picture conversation shows (the vision warm-up's labels)
    picture: Picture | None = None
    #: the picture flipped left to right (``tiny_warmup.mirrored``): its labels and targets too
    mirrored: bool = False


def decoded_images(sample: Sample) -> list[Any]:
    """Draw, encode (JPEG/PNG/WebP) and decode each picture as the server would."""
    settings = MediaSettings()
    images = []
    for picture, fmt, quality in zip(sample.pictures, sample.formats, sample.qualities, strict=True):
        data = encode(draw(picture), fmt, quality)
        images.append(decode_image(data, settings).image)
    return images


def chat_messages(
    n_images: int, questions: list[Question], answers: list[str], image_first: bool = True
) -> list[dict[str, Any]]:
    """The chat: the images with the first question, then one turn per question (answers in between)."""
    messages: list[dict[str, Any]] = []
    for i, question in enumerate(questions):
        content: list[dict[str, Any]] = [{"type": "text", "text": question.text}]
        if i == 0:
            images = [{"type": "image"} for _ in range(n_images)]
            content = images + content if image_first else content + images
        messages.append({"role": "user", "content": content})
        if i < len(answers):
            messages.append({"role": "assistant", "content": [{"type": "text", "text": answers[i]}]})
    return messages


def prompt_inputs(processor: Any, messages: list[dict[str, Any]], *, thinking_off: bool = True) -> str:
    """The served prompt: the chat template with the generation prompt (thinking disabled)."""
    kwargs = {"enable_thinking": False} if thinking_off else {}
    return str(processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs))


def encode_sample(processor: Any, sample: Sample, rng: random.Random) -> Encoded:
    """Process one conversation for training; labels on every answer and its end-of-turn token."""
    return encode_samples(processor, [(sample, training_text(processor, sample, rng))])[0]


def training_text(processor: Any, sample: Sample, rng: random.Random) -> str:
    """The conversation as the model is trained on it: the served prompt, then the last answer.

    The pictures come before the first question 70 % of the time, and half the prompts
    disable thinking (the rest leave the template's default), both drawn from ``rng``.
    """
    questions = [turn.question for turn in sample.turns]
    answers = [turn.answer for turn in sample.turns]
    messages = chat_messages(len(sample.pictures), questions, answers[:-1], image_first=rng.random() < 0.7)
    return prompt_inputs(processor, messages, thinking_off=rng.random() < 0.5) + answers[-1] + END_OF_TURN


def encode_samples(processor: Any, prepared: list[tuple[Sample, str]]) -> list[Encoded]:
    """Process conversations (each with its ``training_text``) in one processor call.

    In one process, 300 conversations took a seventh of the time of one call each (2.0
    against 14.2 s, a training running beside both); the results are the ones lone calls
    give (tested).
    """
    import torch

    images = [image for sample, _ in prepared for image in decoded_images(sample)]
    inputs = processor(text=[text for _, text in prepared], images=images or None, return_tensors=None)
    grids = torch.as_tensor(inputs["image_grid_thw"]) if images else torch.zeros(0, 3, dtype=torch.long)
    pixels = torch.as_tensor(inputs["pixel_values"]) if images else torch.zeros(0)
    per_image = torch.split(pixels, grids.prod(-1).tolist())
    out, first = [], 0
    for (sample, _), ids, types in zip(
        prepared, inputs["input_ids"], inputs["mm_token_type_ids"], strict=True
    ):
        n = len(sample.pictures)
        ids_tensor = torch.tensor(ids)
        out.append(
            Encoded(
                input_ids=ids_tensor,
                labels=_answer_labels(ids_tensor, processor.tokenizer),
                mm_token_type_ids=torch.tensor(types),
                pixel_values=torch.cat(per_image[first : first + n]),
                image_grid_thw=grids[first : first + n],
                picture=sample.pictures[0] if n == 1 else None,
            )
        )
        first += n
    return out


def _answer_labels(ids: Any, tokenizer: Any) -> Any:
    """``ids`` where they are an answer or its end-of-turn token, ``IGNORE`` elsewhere."""
    import torch

    labels = torch.full_like(ids, IGNORE)
    assistant, user, think = tokenizer.convert_tokens_to_ids(["<|assistant|>", END_OF_TURN, "<think>"])
    i = 0
    values = ids.tolist()
    while i < len(values):
        if values[i] != assistant:
            i += 1
            continue
        start = i + 2  # after "<|assistant|>" and its newline
        if start < len(values) and values[start] == think:  # "<think></think>\n"
            start += 3
        end = values.index(user, start) if user in values[start:] else len(values) - 1
        labels[start : end + 1] = ids[start : end + 1]
        i = end + 1
    return labels


def collate(batch: list[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-pad a batch; images concatenated in order, as the processor does for a batch."""
    import torch

    length = max(len(e.input_ids) for e in batch)

    def pad(rows: list[Any], value: int) -> Any:
        out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
        for r, row in enumerate(rows):
            out[r, : len(row)] = row
        return out

    ids = pad([e.input_ids for e in batch], pad_id)
    mask = pad([torch.ones_like(e.input_ids) for e in batch], 0)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": pad([e.labels for e in batch], IGNORE),
        "mm_token_type_ids": pad([e.mm_token_type_ids for e in batch], 0),
        "pixel_values": torch.cat([e.pixel_values for e in batch]).float(),
        "image_grid_thw": torch.cat([e.image_grid_thw for e in batch]),
    }


#: the processor the pool's forked workers inherit (set just before they start)
_WORKER_PROCESSOR: Any = None


def encoded_pool(processor: Any, count: int, seed: int, workers: int, *, chunk: int = 250) -> list[Encoded]:
    """``count`` study conversations, encoded in ``workers`` processes; the same for the same seed.

    Drawing, compressing, decoding and processing a picture costs as much CPU as a
    training step on it, so the pool is made in parallel before training starts.
    Chunk ``i`` draws from ``Random(seed * 1_000_003 + i)``, whatever the worker count.
    """
    return _pool(_encode_chunk, processor, count, seed * 1_000_003, workers, chunk)


def picture_pool(
    processor: Any, count: int, seed: int, workers: int, side: int, *, chunk: int = 250
) -> list[Encoded]:
    """``count`` pictures (1 to 4 shapes each) drawn near the input size, each with every question about it.

    They are drawn at one to two times the model's input area (``side`` squared), so
    the processor shrinks them little: each costs a fraction of a study conversation's
    picture, which may be drawn at up to 1024 x 768. The vision warm-up trains on the
    pictures, the whole model on the conversations. Chunk ``i`` draws its pictures from
    ``Random(seed * 1_000_033 + i)`` and their conversations from another generator, so
    the pictures are the same with or without them.
    """
    import functools

    return _pool(
        functools.partial(_picture_chunk, side=side), processor, count, seed * 1_000_033, workers, chunk
    )


def _pool(work: Any, processor: Any, count: int, base: int, workers: int, chunk: int) -> list[Encoded]:
    import multiprocessing

    global _WORKER_PROCESSOR
    jobs = [(base + i, min(chunk, count - i * chunk)) for i in range((count + chunk - 1) // chunk)]
    _WORKER_PROCESSOR = processor
    try:
        if workers <= 1:
            parts = [work(job) for job in jobs]
        else:
            with multiprocessing.get_context("fork").Pool(workers) as pool:
                parts = pool.map(work, jobs)
    finally:
        _WORKER_PROCESSOR = None
    return [_from_arrays(fields) for part in parts for fields in part]


def _encode_chunk(job: tuple[int, int]) -> list[tuple[Any, ...]]:
    import torch

    torch.set_num_threads(1)
    seed, n = job
    rng = random.Random(seed)
    prepared = []
    for _ in range(n):
        sample = make_study_sample(rng)
        prepared.append((sample, training_text(_WORKER_PROCESSOR, sample, rng)))
    return [_to_arrays(e) for e in encode_samples(_WORKER_PROCESSOR, prepared)]


def _picture_chunk(job: tuple[int, int], side: int) -> list[tuple[Any, ...]]:
    import dataclasses
    import math

    import torch

    from glimpse.engine.tiny_task import FORMATS, random_picture, study_turns

    torch.set_num_threads(1)
    seed, n = job
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        shaped = random_picture(rng, count=rng.randint(1, 4))  # its aspect ratio, at another size
        scale = side * math.sqrt(rng.uniform(1.0, 2.0) / (shaped.width * shaped.height))
        width, height = max(16, round(shaped.width * scale)), max(16, round(shaped.height * scale))
        picture = dataclasses.replace(shaped, width=width, height=height)
        samples.append(Sample([picture], [], [rng.choice(FORMATS)], [rng.randint(60, 95)]))
    talk = random.Random(seed + 7)
    prepared = []
    for sample in samples:
        sample.turns = study_turns(sample.pictures[0], talk)
        prepared.append((sample, training_text(_WORKER_PROCESSOR, sample, talk)))
    return [_to_arrays(e) for e in encode_samples(_WORKER_PROCESSOR, prepared)]


def _to_arrays(e: Encoded) -> tuple[Any, ...]:
    # numpy arrays travel through the pipe; tensors would each need a shared-memory handle. The
    # patches are kept in half precision, which halves the pool's memory (about 150 KB a picture):
    # they are 8-bit pixels rescaled and normalized, steps of about 0.015 that half precision
    # holds to within 0.001; ``collate`` and the warm-up read them back as float32
    import torch

    arrays = (e.input_ids, e.labels, e.mm_token_type_ids, e.pixel_values.to(torch.float16), e.image_grid_thw)
    return (*(a.numpy() for a in arrays), e.picture)


def _from_arrays(fields: tuple[Any, ...]) -> Encoded:
    import torch

    ids, labels, types, pixels, grid, picture = fields
    tensors = [torch.from_numpy(a) for a in (ids, labels, types, pixels, grid)]
    return Encoded(tensors[0], tensors[1], tensors[2], tensors[3], tensors[4], picture=picture)
