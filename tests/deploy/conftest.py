"""The tiny-model fixtures of the end-to-end suite, shared with the deployment tests."""

from __future__ import annotations

from tests.e2e.conftest import tiny_env, tiny_model_dir  # noqa: F401 - pytest fixtures
