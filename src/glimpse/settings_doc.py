"""Document every setting from the ``Settings`` model itself, so docs cannot drift."""

from __future__ import annotations

from collections.abc import Iterator

from pydantic import BaseModel

from glimpse.config import Settings

__all__ = ["iter_settings", "settings_markdown"]


def iter_settings() -> Iterator[tuple[str, str, str]]:
    """(environment variable, default, description) for every leaf setting."""
    for section, section_field in Settings.model_fields.items():
        model = section_field.default_factory() if section_field.default_factory else None  # type: ignore[call-arg]
        assert isinstance(model, BaseModel)
        for name, field in type(model).model_fields.items():
            env = f"GLIMPSE_{section.upper()}__{name.upper()}"
            default = getattr(model, name)
            shown = "(secret)" if "secret" in type(default).__name__.lower() else repr(default)
            yield env, shown, field.description or ""


def settings_markdown() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{env}` | `{default}` | {doc} |" for env, default, doc in iter_settings()]
    return "\n".join(rows) + "\n"
