"""Value rules for config keys: declared beside each field, checked when a config is loaded.

A field declares its rules with :func:`setting` (``epochs: int = setting(15, at_least(1))``); the
loader checks every value against them and names the key, the value and what is allowed. The same
rules render as docs/config.md's table (:func:`rules_markdown`), so the docs cannot drift.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines.storage.uri import redact


@dataclass(frozen=True)
class Rule:
    """``problem(value)`` returns what is wrong with ``value`` (None when it is allowed); ``text``
    says what is allowed, for messages and docs."""

    text: str
    problem: Callable[[Any], str | None]


def _simple(text: str, ok: Callable[[Any], bool]) -> Rule:
    return Rule(text, lambda v: None if ok(v) else f"must be {text}")


def at_least(n: float) -> Rule:
    return _simple(f">= {n}", lambda v: v >= n)


def above(n: float) -> Rule:
    return _simple(f"> {n}", lambda v: v > n)


def within(lo: float, hi: float) -> Rule:
    return _simple(f"in [{lo}, {hi}]", lambda v: lo <= v <= hi)


def one_of(*choices: Any) -> Rule:
    return _simple("one of " + ", ".join(map(str, choices)), lambda v: v in choices)


def each(rule: Rule, length: int | None = None) -> Rule:
    """Every item of a list meets ``rule`` (and the list has ``length`` items, when given)."""
    text = (f"{length} values, " if length else "") + f"each {rule.text}"

    def problem(values: list[Any]) -> str | None:
        if length is not None and len(values) != length:
            return f"must be {text}"
        bad = [v for v in values if rule.problem(v)]
        return f"must be {text} (got {bad[0]!r})" if bad else None

    return Rule(text, problem)


NAME_TEXT = "a folder name: letters, digits, '.', '_' or '-'"


def folder_name(allow_empty: bool = False) -> Rule:
    """Safe as one path component (run ids and dataset names become folders)."""
    pattern = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
    text = NAME_TEXT + (" (or empty)" if allow_empty else "")
    return _simple(text, lambda v: (allow_empty and v == "") or bool(pattern.fullmatch(v)))


def rules_of(field: dataclasses.Field[Any]) -> tuple[Rule, ...]:
    rules: tuple[Rule, ...] = field.metadata.get("rules", ())  # set by setting(); metadata is a plain Mapping
    return rules


def setting(default: Any, *rules: Rule) -> Any:
    """A dataclass field with ``rules``; mutable defaults (lists, dicts) are copied per instance."""
    metadata = {"rules": rules}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check(field: dataclasses.Field[Any], value: Any, key: str) -> str | None:
    """The first rule ``value`` breaks, as a message naming ``key``; None when all hold."""
    for rule in rules_of(field):
        problem = rule.problem(value)
        if problem:
            shown = redact(value) if isinstance(value, str) else value  # a refused secret is not repeated
            return f"config key {key!r} = {shown!r} {problem}"
    return None


def rules_markdown(root: type, extra: dict[str, str] | None = None) -> str:
    """A markdown table of every key under dataclass ``root``: default and what is allowed."""
    rows = ["| key | type | default | allowed |", "| --- | --- | --- | --- |"]

    def walk(cls: type, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if dataclasses.is_dataclass(default):
                walk(type(default), prefix + f.name + ".")
                continue
            key = prefix + f.name
            allowed = "; ".join([r.text for r in rules_of(f)] + ([extra[key]] if extra and key in extra else []))
            rows.append(f"| `{key}` | {f.type} | `{default!r}` | {allowed or 'any ' + str(f.type)} |")

    walk(root, "")
    return "\n".join(rows)
