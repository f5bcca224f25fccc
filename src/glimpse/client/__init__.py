"""HTTP clients for a running server: ``glimpse bench`` and ``glimpse batch``.

Pure HTTP on purpose: nothing here imports the engine or the API, so the
commands work against any OpenAI-compatible server and on machines without torch.
"""

from glimpse.client.batch import register_batch, run_batch
from glimpse.client.bench import register_bench, run_bench, run_compare

__all__ = ["register_batch", "register_bench", "run_batch", "run_bench", "run_compare"]
