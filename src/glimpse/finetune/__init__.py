"""``glimpse finetune``: LoRA adapters for the served model, trained from a JSONL dataset.

Reads image + question + answer lines (``dataset``), builds the server's own
prompts (``encode``), trains with PEFT (``trainer``), validates each epoch
(``evaluate``) and checkpoints so an interrupted run resumes (``checkpoint``).
"""

from glimpse.finetune.dataset import BadLine, Dataset, DatasetError, Example, read_dataset
from glimpse.finetune.options import FinetuneOptions
from glimpse.finetune.trainer import REPORT, finetune

__all__ = [
    "REPORT",
    "BadLine",
    "Dataset",
    "DatasetError",
    "Example",
    "FinetuneOptions",
    "finetune",
    "read_dataset",
]
