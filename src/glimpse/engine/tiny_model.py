"""The tiny models of the real GLM-4.6V architecture: the shipped trained one, and random ones.

``--model tiny`` serves the checkpoint in ``tiny_weights/`` next to this module:
trained offline on coloured shapes by ``glimpse train-tiny`` (see ``tiny_train``
and its ``MANIFEST.json``), so its answers about such pictures are right or wrong.
The rest of this module builds the random-weight models: a tiny one for fast
tests of the batching machinery, and a full-size one for GPU benchmarks.


Random models: no weights can be downloaded where Glimpse is developed and tested, yet every
test must go through the same loading code as the real checkpoint. So this
module writes a real ``Glm46VForConditionalGeneration`` checkpoint directory:
a few small layers with seeded random weights, a byte-level BPE tokenizer trained
here on a built-in Chinese + English text and carrying GLM-4.6V's special
tokens, GLM-4.6V's chat template, and the real image-processor configuration.
``AutoProcessor`` / ``AutoModelForImageTextToText.from_pretrained(dir)`` load it
like any checkpoint. Its answers are meaningless by construction.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CHAT_TEMPLATE",
    "SPECIAL_TOKENS",
    "build_full_size_model",
    "build_random_tiny_model",
    "default_random_tiny_model_dir",
    "ensure_random_tiny_model",
    "shipped_tiny_model_dir",
    "staged_directory",
    "write_random_checkpoint",
]

logger = logging.getLogger(__name__)

#: GLM-4.6V's special tokens, in the real tokenizer's order (ids 151329...).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
    "<think>",
    "</think>",
)

#: GLM-4.6V's chat format: ``[gMASK]<sop>`` then role tokens, images as
#: ``<|begin_of_image|><|image|><|end_of_image|>`` (the processor expands ``<|image|>``).
#: Tools, an assistant's calls and ``tool`` results render as in GLM-4.5/4.6/4.6V's own
#: templates (the same text: the ``# Tools`` system turn, ``<tool_call>name`` with
#: ``<arg_key>``/``<arg_value>`` lines, ``<|observation|>`` and ``<tool_response>``).
CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{%- if tools -%}<|system|>{{ '\\n' }}# Tools{{ '\\n\\n' }}"
    "You may call one or more functions to assist with the user query.{{ '\\n\\n' }}"
    "You are provided with function signatures within <tools></tools> XML tags:{{ '\\n' }}<tools>{{ '\\n' }}"
    "{%- for tool in tools %}{{ tool | tojson(ensure_ascii=False) }}{{ '\\n' }}{%- endfor %}"
    "</tools>{{ '\\n\\n' }}"
    "For each function call, output the function name and arguments within the following XML format:"
    "{{ '\\n' }}<tool_call>{function-name}{{ '\\n' }}<arg_key>{arg-key-1}</arg_key>{{ '\\n' }}"
    "<arg_value>{arg-value-1}</arg_value>{{ '\\n' }}<arg_key>{arg-key-2}</arg_key>{{ '\\n' }}"
    "<arg_value>{arg-value-2}</arg_value>{{ '\\n' }}...{{ '\\n' }}</tool_call>"
    "{%- endif %}"
    "{%- for msg in messages %}"
    "{%- if msg.role == 'system' %}<|system|>{{ '\\n' }}"
    "{%- if msg.content is string %}{{ msg.content }}{%- else %}"
    "{%- for item in msg.content %}{%- if item.type == 'text' %}{{ item.text }}{%- endif %}{%- endfor %}"
    "{%- endif %}"
    "{%- elif msg.role == 'user' %}<|user|>{{ '\\n' }}"
    "{%- if msg.content is string %}{{ msg.content }}{%- else %}"
    "{%- for item in msg.content %}"
    "{%- if item.type == 'image' or item.type == 'image_url' or 'image' in item %}"
    "<|begin_of_image|><|image|><|end_of_image|>"
    "{%- elif item.type == 'video' or 'video' in item %}<|begin_of_video|><|video|><|end_of_video|>"
    "{%- elif item.type == 'text' %}{{ item.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{%- elif msg.role == 'assistant' %}<|assistant|>{{ '\\n' }}"
    "{%- if msg.content is string %}{{ msg.content }}{%- else %}"
    "{%- for item in msg.content %}{%- if item.type == 'text' %}{{ item.text }}{%- endif %}{%- endfor %}"
    "{%- endif %}"
    "{%- for call in msg.tool_calls or [] %}{%- set fn = call.function or call %}"
    "{{ '\\n<tool_call>' + fn.name + '\\n' }}"
    "{%- for key, value in (fn.arguments or {}).items() %}<arg_key>{{ key }}</arg_key>{{ '\\n' }}"
    "<arg_value>{{ value if value is string else value | tojson(ensure_ascii=False) }}</arg_value>{{ '\\n' }}"
    "{%- endfor %}</tool_call>"
    "{%- endfor %}"
    "{%- elif msg.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}<|observation|>{%- endif %}"
    "{{ '\\n<tool_response>\\n' }}"
    "{%- if msg.content is string %}{{ msg.content }}{%- else %}"
    "{%- for item in msg.content %}{%- if item.type == 'text' %}{{ item.text }}{%- endif %}{%- endfor %}"
    "{%- endif %}"
    "{{ '\\n</tool_response>' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|assistant|>{{ '\\n' }}"
    # GLM-4.6V's switch: enable_thinking=false starts the answer with an empty thought.
    "{%- if enable_thinking is defined and not enable_thinking %}<think></think>{{ '\\n' }}{%- endif %}"
    "{%- endif %}"
)

# A small bilingual text the tokenizer learns its merges from: enough to give
# common words and characters their own tokens, so answers decode to varied text.
_CORPUS = """
Glimpse answers questions about images. What is in this picture? Describe the image in detail.
The cat is sitting on the red sofa next to a window. There are three people walking in the park.
Read the text in the document and summarize it. How many apples are on the table? Is this safe?
The invoice total is 42 dollars. The chart shows sales growing every month from January to June.
Please answer in English. Please answer briefly. The answer is yes. The answer is no. I think so.
A photo of a street with cars, buses and bicycles at night, lit by yellow lamps and shop signs.
这张图片里有什么？请详细描述这张图片。图中有一只猫坐在红色的沙发上，旁边是窗户。
请读出文档中的文字并总结。桌子上有几个苹果？这张发票的总金额是多少？请用中文回答。
图表显示销售额从一月到六月每个月都在增长。公园里有三个人在散步。街上有汽车、公交车和自行车。
请忽略图片背景，只看文字。这道数学题的答案是多少？老师让学生回答问题。客户服务机器人。
答案是是的。答案是不。我认为是这样。内容审核：这张图片是否包含不安全的内容？
0 1 2 3 4 5 6 7 8 9 10 100 1000 , . ? ! : ; ( ) [ ] " ' - + = * / % # @ & 。，？！：；（）《》
"""

_TEXT_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 128,
    "max_position_embeddings": 8192,
    # head_dim 16, partial_rotary_factor 0.5 -> rotary dim 8; mrope_section sums to 8 / 2.
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [1, 1, 2],
        "partial_rotary_factor": 0.5,
    },
}
_VISION_CONFIG = {
    "depth": 2,
    "hidden_size": 64,
    "num_heads": 4,
    "intermediate_size": 128,
    "out_hidden_size": 64,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}
_VOCAB_SIZE = 1024
_SEED = 1234


def shipped_tiny_model_dir() -> Path:
    """The trained tiny model that ships inside the package (what ``--model tiny`` serves)."""
    return Path(__file__).parent / "tiny_weights"


def default_random_tiny_model_dir() -> Path:
    return Path.home() / ".cache" / "glimpse" / "tiny-glm46v-random"


def _build_tokenizer(vocab_size: int | None = None, extra_corpus: tuple[str, ...] = ()) -> Any:
    """A byte-level BPE tokenizer with GLM's special tokens; ``vocab_size`` pads it to a model's vocabulary.

    Padding matters for the full-size model: its 151,552 logits would otherwise mostly
    pick ids no token stands for, which decode to nothing, so a stream would show no
    text for most tokens and time-to-first-token would be measured wrong. The fillers
    sit below the special tokens, as in GLM's own tokenizer, and decode to " w<n>".
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=_VOCAB_SIZE - len(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS.strip().splitlines() * 4 + list(extra_corpus), trainer=trainer)
    if vocab_size is not None:
        backend = _pad_vocab(backend, vocab_size - len(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|endoftext|>",  # noqa: S106 - a token name, not a password
        pad_token="<|endoftext|>",  # noqa: S106
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        padding_side="left",
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _pad_vocab(backend: Any, size: int) -> Any:
    """The same BPE model with filler tokens up to ``size`` ids (decode-only: no merge makes them)."""
    from tokenizers import Tokenizer

    data = json.loads(backend.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    next_id = max(vocab.values()) + 1
    for n in range(size - next_id):
        vocab[f"\u0120w{n}"] = next_id + n  # "\u0120" is byte-level BPE's space
    return Tokenizer.from_str(json.dumps(data))


#: GLM-4.6V-Flash's real text rope settings (the default ``Glm46VConfig`` sizes are the real ones).
_FULL_VOCAB_SIZE = 151552
_FULL_TEXT_CONFIG = {
    "vocab_size": _FULL_VOCAB_SIZE,
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 10000.0,
        "mrope_section": [8, 12, 12],
        "partial_rotary_factor": 0.5,
    },
}


def _model_config(
    tokenizer: Any,
    full_size: bool = False,
    text_config: dict[str, Any] | None = None,
    vision_config: dict[str, Any] | None = None,
) -> Any:
    from transformers import Glm46VConfig

    def tid(token: str) -> int:
        return int(tokenizer.convert_tokens_to_ids(token))

    vocab_size = len(tokenizer)
    eos = [tid("<|endoftext|>"), tid("<|user|>"), tid("<|observation|>")]
    text = _FULL_TEXT_CONFIG if full_size else {**(text_config or _TEXT_CONFIG), "vocab_size": vocab_size}
    return Glm46VConfig(
        text_config={**text, "eos_token_id": eos, "pad_token_id": eos[0]},
        vision_config={} if full_size else (vision_config or _VISION_CONFIG),
        image_token_id=tid("<|image|>"),
        video_token_id=tid("<|video|>"),
        image_start_token_id=tid("<|begin_of_image|>"),
        image_end_token_id=tid("<|end_of_image|>"),
        video_start_token_id=tid("<|begin_of_video|>"),
        video_end_token_id=tid("<|end_of_video|>"),
        eos_token_id=eos,
        pad_token_id=eos[0],
    )


def build_random_tiny_model(directory: Path) -> Path:
    """Write the tiny random-weight checkpoint to ``directory`` (replaced if present) and return it."""
    return _build(Path(directory), full_size=False)


def build_full_size_model(directory: Path, device: str = "auto") -> Path:
    """Write a checkpoint of the real GLM-4.6V-Flash sizes (about 10 B parameters) with random weights.

    For benchmarks: weight values do not change speed or memory, so this measures the
    cost of serving the real model, through the same loading code. About 20 GB on disk
    (bfloat16); built whole on the GPU when there is one, else written one module at a
    time (``write_random_checkpoint``), so a CPU machine with less memory than the model
    can write it.
    """
    return _build(Path(directory), full_size=True, device=device)


_MARKER = "GLIMPSE_TINY_MODEL.json"


def _check_target(directory: Path) -> Path:
    """The folder to (re)write, or ``ModelLoadError`` if replacing it could destroy someone's files.

    The build replaces the folder whole, so it must be new, empty, or a model this
    command wrote before (it has the marker file); never the current folder or one above it.
    """
    from glimpse.errors import ModelLoadError

    target = directory.expanduser().resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise ModelLoadError(
            f"Refusing to write the tiny model into {target}: it is the current folder or one above it, "
            "and the build replaces the folder whole. Name a new folder, e.g. ./tiny-glm46v."
        )
    if target.exists() and not target.is_dir():
        raise ModelLoadError(f"Cannot write the tiny model to {target}: it is a file, not a folder.")
    if target.is_dir() and any(target.iterdir()) and not (target / _MARKER).is_file():
        raise ModelLoadError(
            f"Refusing to write the tiny model into {target}: the folder is not empty and holds no model "
            "this command wrote, and the build replaces the folder whole. Name a new or empty folder."
        )
    return target


def _build(directory: Path, *, full_size: bool, device: str = "cpu") -> Path:
    import torch
    from transformers import GenerationConfig, Glm46VImageProcessor, Glm46VProcessor, Glm46VVideoProcessor

    directory = _check_target(Path(directory))
    tokenizer = _build_tokenizer(_FULL_VOCAB_SIZE if full_size else None)
    config = _model_config(tokenizer, full_size)
    generation = GenerationConfig(
        eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id, do_sample=False
    )
    processor = Glm46VProcessor(
        image_processor=Glm46VImageProcessor(),
        tokenizer=tokenizer,
        video_processor=Glm46VVideoProcessor(),
        chat_template=CHAT_TEMPLATE,
    )
    note = {"warning": "random weights: answers are meaningless", "seed": _SEED, "full_size": full_size}
    target = "cuda" if device == "auto" and torch.cuda.is_available() else device.replace("auto", "cpu")
    torch.manual_seed(_SEED)
    with staged_directory(directory) as staging:
        if full_size and target == "cpu":
            write_random_checkpoint(config, generation, staging)
        else:
            model = _full_size_model(config, target) if full_size else _tiny_random_model(config)
            model.generation_config = generation
            model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / _MARKER).write_text(json.dumps(note) + "\n")
    return directory


def _full_size_model(config: Any, device: str) -> Any:
    """The whole full-size model in bfloat16 on ``device`` (a GPU: it has the room)."""
    import torch
    from transformers import Glm46VForConditionalGeneration

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return Glm46VForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)


def _tiny_random_model(config: Any) -> Any:
    import torch
    from transformers import Glm46VForConditionalGeneration

    model = Glm46VForConditionalGeneration(config).eval()
    # The default init leaves many weights near zero; wider weights make
    # greedy answers vary with the image and the question, which tests rely on.
    with torch.no_grad():
        generator = torch.Generator().manual_seed(_SEED)
        for param in model.parameters():
            if param.dim() >= 2:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model


#: Bytes of tensors held before they are written out as one safetensors file.
_SHARD_BYTES = 2 * 2**30


def write_random_checkpoint(
    config: Any, generation: Any, directory: Path, *, shard_bytes: int = _SHARD_BYTES
) -> int:
    """Write a bfloat16 ``Glm46VForConditionalGeneration`` checkpoint of random weights one module at a time.

    The full-size model is 20.6 GB in bfloat16, more than a 24 GB CPU machine can hold
    beside anything else, so it is never built whole: the model exists on the ``meta``
    device (no memory), each module's weights are materialised, filled as transformers
    initialises them (``initializer_range`` normal, norms one, biases zero) and queued,
    and every ``shard_bytes`` the queue is written as one safetensors file and freed.
    Peak memory: about one shard plus the largest tensor. Returns the bytes written.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import Glm46VForConditionalGeneration

    with torch.device("meta"):
        model = Glm46VForConditionalGeneration(config).to(torch.bfloat16)
    saved = set(model.state_dict())  # non-persistent buffers (rotary frequencies) are not written
    std = float(getattr(config.get_text_config(), "initializer_range", None) or 0.02)
    generator = torch.Generator().manual_seed(_SEED)
    shards: list[tuple[Path, list[str]]] = []
    pending: dict[str, Any] = {}
    total = 0
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        own = [n for n, _ in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False))]
        keys = {attr: prefix + attr for attr in own if prefix + attr in saved}
        if not keys:
            continue
        module.to_empty(device="cpu", recurse=False)
        for attr, key in keys.items():
            pending[key] = _random_fill(getattr(module, attr).detach(), attr, module, std, generator)
            total += pending[key].nbytes
        module.to_empty(device="meta", recurse=False)  # ``pending`` holds the only reference
        if sum(t.nbytes for t in pending.values()) >= shard_bytes:
            shards.append(_write_shard(pending, directory / f".shard-{len(shards)}.safetensors", save_file))
    if pending:
        shards.append(_write_shard(pending, directory / f".shard-{len(shards)}.safetensors", save_file))
    weight_map: dict[str, str] = {}
    for number, (path, shard_keys) in enumerate(shards, start=1):
        final = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        path.rename(directory / final)
        weight_map.update(dict.fromkeys(shard_keys, final))
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    config.architectures = [type(model).__name__]
    config.dtype = torch.bfloat16  # what save_pretrained records, and what "auto" loads
    config.save_pretrained(directory)
    generation.save_pretrained(directory)
    return total


def _random_fill(tensor: Any, attr: str, module: Any, std: float, generator: Any) -> Any:
    """Fill one weight as transformers' ``_init_weights`` would: biases 0, norms 1, the rest normal."""
    if attr == "bias":
        return tensor.zero_()
    if "Norm" in type(module).__name__:
        return tensor.fill_(1.0)
    return tensor.normal_(0.0, std, generator=generator)


def _write_shard(pending: dict[str, Any], path: Path, save_file: Any) -> tuple[Path, list[str]]:
    """Write the queued tensors to ``path`` and empty the queue (their memory goes with it)."""
    save_file(pending, path, metadata={"format": "pt"})
    keys = list(pending)
    pending.clear()
    return path, keys


@contextlib.contextmanager
def staged_directory(directory: Path) -> Iterator[Path]:
    """A folder beside ``directory`` to write a model into; it replaces ``directory`` once the block ends.

    Written next to the target and renamed, so a half-written model is never loaded;
    if the block fails, the target is left as it was and the staging folder removed.
    """
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tiny-", dir=directory.parent))
    try:
        yield staging
        if directory.exists():
            shutil.rmtree(directory)
        staging.rename(directory)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def ensure_random_tiny_model(directory: Path | None = None) -> Path:
    """Return the tiny random-weight model's directory, building it first if it is missing or was
    built with another chat template (one written before the template learned tools)."""
    target = Path(directory) if directory is not None else default_random_tiny_model_dir()
    template = target / "chat_template.jinja"
    if (
        (target / _MARKER).is_file()
        and (target / "config.json").is_file()
        and template.is_file()
        and template.read_text(encoding="utf-8") == CHAT_TEMPLATE
    ):
        return target
    logger.info("building the tiny random-weight GLM-4.6V model in %s", target)
    return build_random_tiny_model(target)
