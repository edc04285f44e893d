"""One JSON codec for dlpipe's typed formats: frozen dataclasses <-> plain JSON data.

Every file or message dlpipe writes (the dataset manifest, checkpoints, rank events, each verb's
result, the run summary) is a frozen dataclass defined in the module that owns it; that module
is the only one that knows the file's keys. This module gives them one way to become plain data
and back, driven by the dataclass's type hints:

    manifest = Manifest.from_dict(json.loads(text), where="work/datasets/digits/manifest.json")
    text = json.dumps(manifest.to_dict())

A value of the wrong type, a missing key or an unknown key raises :class:`FormatError` naming the
file and the key (``manifest.json: key 'splits.train.count' expects int, got 'x'``).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T", bound="Record")


class FormatError(ValueError):
    """A file or message does not hold what its format says; the message names where and which key."""


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def to_plain(value: Any) -> Any:
    """Dataclasses -> dicts, tuples -> lists, recursively (what ``json.dumps`` and ``torch.save``
    with ``weights_only`` loading both accept). Anything else is returned as it is."""
    if isinstance(value, Record):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value


def from_plain(tp: Any, value: Any, where: str, key: str = "") -> Any:
    """``value`` (plain data) as type ``tp``: dataclasses, lists, tuples, dicts, unions with None,
    str, int, float (ints accepted), bool and ``Any`` (taken as it is)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if issubclass(tp, Record):
            return tp.from_dict(value, where, key)
        return _fields_from(tp, value, where, key)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(tp)
        if value is None and type(None) in options:
            return None
        problems = []
        for option in options:
            if option is type(None):
                continue
            try:
                return from_plain(option, value, where, key)
            except FormatError as e:
                problems.append(str(e))
        raise FormatError(problems[-1] if problems else _wrong(tp, value, where, key))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise FormatError(_wrong(tp, value, where, key))
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [from_plain(item, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise FormatError(_wrong(tp, value, where, key))
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {k: from_plain(val_tp, v, where, _join(key, str(k))) for k, v in value.items()}
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise FormatError(_wrong(tp, value, where, key))
    if tp in (int, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise FormatError(_wrong(tp, value, where, key))
    if isinstance(tp, type) and isinstance(value, tp):  # e.g. torch tensors inside checkpoints
        return value
    raise FormatError(_wrong(tp, value, where, key))


def _fields_from(cls: type, value: Any, where: str, key: str) -> Any:
    if not isinstance(value, dict):
        raise FormatError(_wrong(cls, value, where, key))
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise FormatError(f"{where}: unknown key(s) {', '.join(_join(key, u) for u in unknown)} "
                          f"(a {cls.__name__} has {', '.join(fields)})")
    kwargs = {}
    for name, f in fields.items():
        if name in value:
            kwargs[name] = from_plain(hints[name], value[name], where, _join(key, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise FormatError(f"{where}: key '{_join(key, name)}' is missing")
    return cls(**kwargs)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _wrong(tp: Any, value: Any, where: str, key: str) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
    return f"{where}: key '{key or '(top level)'}' expects {name}, got {shown}"


class Record:
    """Base of dlpipe's frozen format dataclasses: ``to_dict`` / ``from_dict`` / ``to_json`` /
    ``from_json``. A format whose file shape differs from its fields overrides the two dict methods."""

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.fields(self)  # type: ignore[arg-type]  # a Record's subclasses are all dataclasses
        return {f.name: to_plain(getattr(self, f.name)) for f in fields}

    @classmethod
    def from_dict(cls: type[T], value: Any, where: str = "", key: str = "") -> T:
        return _fields_from(cls, value, where or cls.__name__, key)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_json(cls: type[T], text: str, where: str = "") -> T:
        try:
            value = json.loads(text)
        except ValueError as e:
            raise FormatError(f"{where or cls.__name__}: not JSON ({e})") from None
        return cls.from_dict(value, where)


R = TypeVar("R", bound=Record)


class TaggedCodec(typing.Generic[R]):
    """One closed set of record types told apart by a tag field (rank events by ``kind``, launcher
    messages by ``type``): the one encoder and decoder of every tagged set. Each type names its tag
    in a class attribute of the tag field's name."""

    def __init__(self, tag: str, types: tuple[type[R], ...], what: str) -> None:
        self.tag, self.what = tag, what
        self.types: dict[str, type[R]] = {getattr(t, tag): t for t in types}
        if len(self.types) != len(types):
            raise ValueError(f"{what}: two types share one {tag}")

    def encode(self, record: R) -> dict[str, Any]:
        """``{<tag>: ..., <its fields>}`` as plain data."""
        return {self.tag: getattr(type(record), self.tag), **record.to_dict()}

    def decode(self, value: Any) -> R:
        """The record :meth:`encode` made; :class:`FormatError` for an unknown tag or a wrong field."""
        tag = value.get(self.tag) if isinstance(value, dict) else value
        if not isinstance(value, dict) or tag not in self.types:
            raise FormatError(f"{self.what}: unknown {self.tag} {tag!r} (known: {', '.join(self.types)})")
        cls = self.types[tag]
        return cls.from_dict({k: v for k, v in value.items() if k != self.tag}, f"{self.what} {tag!r}")
