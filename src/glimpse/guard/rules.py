"""Prompt-guard rules: loaded from JSON data, compiled once.

Rules are data so operators can add phrasing for their own traffic (or switch a
noisy built-in rule off) without a release. The built-in file ships inside the
package; a user file is merged on top: a rule with a new id is added, one with
an existing id replaces the built-in, and ``"disabled": true`` removes it.
Patterns may use ``{{name}}`` to share vocabulary lists defined under
``"vocab"`` (a user file sees the built-in vocabulary plus its own).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["Rule", "RuleSet", "load_rules"]

View = Literal["text", "squashed"]
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
_BUILTIN = "prompt_injection.json"


class _RuleModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    language: str = "any"
    category: str = "other"
    view: View = "text"
    description: str = ""
    patterns: tuple[str, ...] = ()
    disabled: bool = False


class _RuleFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int = 1
    description: str = ""
    vocab: dict[str, str] = Field(default_factory=dict)
    rules: tuple[_RuleModel, ...] = ()


@dataclass(slots=True, frozen=True)
class Rule:
    id: str
    language: str
    category: str
    view: View
    patterns: tuple[re.Pattern[str], ...]
    # Some pattern anchors on the start or end of a text ("^", "$"): such a rule is
    # also matched against each message alone, not only the joined conversation.
    anchored: bool = False


@dataclass(slots=True, frozen=True)
class RuleSet:
    rules: tuple[Rule, ...]

    def __len__(self) -> int:
        return len(self.rules)


def _expand(pattern: str, vocab: dict[str, str], rule_id: str) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in vocab:
            raise ValueError(f"prompt rule {rule_id!r}: unknown vocabulary {{{{{name}}}}}")
        return vocab[name]

    # Vocabulary may refer to other vocabulary, so expand until nothing is left.
    for _ in range(5):
        expanded = _PLACEHOLDER.sub(substitute, pattern)
        if expanded == pattern:
            return expanded
        pattern = expanded
    raise ValueError(f"prompt rule {rule_id!r}: vocabulary nested too deeply")


def _compile(model: _RuleModel, vocab: dict[str, str]) -> Rule:
    if not model.patterns:
        raise ValueError(f"prompt rule {model.id!r} has no patterns")
    compiled = []
    for raw in model.patterns:
        try:
            compiled.append(re.compile(_expand(raw, vocab, model.id)))
        except re.error as exc:
            raise ValueError(f"prompt rule {model.id!r}: bad pattern: {exc}") from exc
    anchored = any("^" in p.pattern.replace("[^", "") or "$" in p.pattern for p in compiled)
    return Rule(model.id, model.language, model.category, model.view, tuple(compiled), anchored)


def _parse(data: Any, source: str) -> _RuleFile:
    try:
        return _RuleFile.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"invalid prompt rules in {source}: {exc}") from exc


def _read_builtin() -> _RuleFile:
    text = resources.files("glimpse.guard").joinpath("rules", _BUILTIN).read_text(encoding="utf-8")
    return _parse(json.loads(text), f"built-in {_BUILTIN}")


def _read_user(path: Path) -> _RuleFile:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read prompt rules file {path}: {exc}") from exc
    return _parse(data, str(path))


def load_rules(extra_file: Path | None = None) -> RuleSet:
    """Built-in rules merged with ``extra_file``; raises ``ValueError`` on bad data.

    Called once at start-up, so a broken rules file stops the server instead of
    silently guarding nothing.
    """
    builtin = _read_builtin()
    vocab = dict(builtin.vocab)
    merged: dict[str, _RuleModel] = {rule.id: rule for rule in builtin.rules}
    if extra_file is not None:
        user = _read_user(extra_file)
        vocab.update(user.vocab)
        for rule in user.rules:
            merged[rule.id] = rule
    return RuleSet(tuple(_compile(rule, vocab) for rule in merged.values() if not rule.disabled))
