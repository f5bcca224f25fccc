"""Measure the prompt guard against a labelled JSON-lines set.

Each line is ``{"text": ..., "label": "attack"|"benign", "lang": ...}``, or has
``"messages": [...]`` (texts of one conversation, screened together as a
request's messages are) instead of ``"text"``. The
figures are what the README reports and what the tests hold floors on, so rule
changes are judged by data, not by the example that prompted them.

    python -m glimpse.guard.evaluate tests/data/guard/prompts.jsonl [--rules extra.json] [--show-errors]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from glimpse.config import GuardSettings
from glimpse.guard.prompt import PromptGuard

__all__ = ["Evaluation", "LabelledPrompt", "Scores", "evaluate", "load_dataset", "main"]


@dataclass(slots=True, frozen=True)
class LabelledPrompt:
    texts: tuple[str, ...]
    attack: bool
    lang: str

    @property
    def text(self) -> str:
        return "\n".join(self.texts)


@dataclass(slots=True)
class Scores:
    true_pos: int = 0
    false_pos: int = 0
    true_neg: int = 0
    false_neg: int = 0

    @property
    def precision(self) -> float:
        flagged = self.true_pos + self.false_pos
        return self.true_pos / flagged if flagged else 1.0

    @property
    def recall(self) -> float:
        attacks = self.true_pos + self.false_neg
        return self.true_pos / attacks if attacks else 1.0

    @property
    def attacks(self) -> int:
        return self.true_pos + self.false_neg

    @property
    def benign(self) -> int:
        return self.true_neg + self.false_pos

    def add(self, *, attack: bool, flagged: bool) -> None:
        if attack and flagged:
            self.true_pos += 1
        elif attack:
            self.false_neg += 1
        elif flagged:
            self.false_pos += 1
        else:
            self.true_neg += 1


@dataclass(slots=True)
class Evaluation:
    overall: Scores = field(default_factory=Scores)
    by_language: dict[str, Scores] = field(default_factory=dict)
    missed: list[LabelledPrompt] = field(default_factory=list)
    false_alarms: list[tuple[LabelledPrompt, tuple[str, ...]]] = field(default_factory=list)

    @property
    def precision(self) -> float:
        return self.overall.precision

    @property
    def recall(self) -> float:
        return self.overall.recall


def load_dataset(path: Path) -> list[LabelledPrompt]:
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("label") not in {"attack", "benign"}:
            raise ValueError(f"{path}:{number}: label must be 'attack' or 'benign'")
        texts = tuple(str(t) for t in row["messages"]) if "messages" in row else (str(row["text"]),)
        items.append(LabelledPrompt(texts=texts, attack=row["label"] == "attack", lang=str(row["lang"])))
    return items


def evaluate(guard: PromptGuard, dataset_path: Path) -> Evaluation:
    """Run ``guard.check`` over every prompt and count hits and misses."""
    result = Evaluation()
    for item in load_dataset(dataset_path):
        verdict = guard.check(item.texts)
        result.overall.add(attack=item.attack, flagged=verdict.flagged)
        result.by_language.setdefault(item.lang, Scores()).add(attack=item.attack, flagged=verdict.flagged)
        if item.attack and not verdict.flagged:
            result.missed.append(item)
        elif verdict.flagged and not item.attack:
            result.false_alarms.append((item, verdict.rule_ids))
    return result


def _line(name: str, scores: Scores) -> str:
    return (
        f"{name:<8} precision {scores.precision:.3f}  recall {scores.recall:.3f}  "
        f"({scores.attacks} attacks, {scores.benign} benign; "
        f"TP {scores.true_pos} FP {scores.false_pos} FN {scores.false_neg} TN {scores.true_neg})\n"
    )


def format_report(result: Evaluation, *, show_errors: bool = False) -> str:
    out = [_line("overall", result.overall)]
    out += [_line(lang, scores) for lang, scores in sorted(result.by_language.items())]
    if show_errors:
        out += [f"MISSED      [{item.lang}] {list(item.texts)!r}\n" for item in result.missed]
        out += [
            f"FALSE ALARM [{item.lang}] {list(item.texts)!r} <- {','.join(rules)}\n"
            for item, rules in result.false_alarms
        ]
    return "".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m glimpse.guard.evaluate", description=__doc__)
    parser.add_argument("dataset", type=Path, help="labelled JSON-lines file")
    parser.add_argument(
        "--rules", type=Path, default=None, help="extra rules file, merged with the built-in one"
    )
    parser.add_argument("--show-errors", action="store_true", help="list missed attacks and false alarms")
    args = parser.parse_args(argv)
    guard = PromptGuard(GuardSettings(prompt_guard="flag", prompt_rules_file=args.rules))
    sys.stdout.write(format_report(evaluate(guard, args.dataset), show_errors=args.show_errors))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
