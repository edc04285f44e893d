"""One JSON codec for dlpipe's typed formats: frozen dataclasses <-> plain JSON data.

Every file or message dlpipe writes (the dataset manifest, checkpoints, rank events, each verb's
result, the run summary) is a frozen dataclass defined in the module that owns it; that module
is the only one that knows the file's keys. This module gives them one way to become plain data
and back, driven by the dataclass's type hints:

    manifest = Manifest.from_dict(json.loads(text), where="work/datasets/digits/manifest.json")
    text = json.dumps(manifest.to_dict())

A value of the wrong type, a missing key or an unknown key raises :class:`FormatError` naming the
file and the key (``manifest.json: key 'splits.train.count' expects int, got 'x'``).

The walk over the type hints (:func:`decode`) is dlpipe's one type-hint decoder: ``pipelines.config``
decodes its YAML through it too, with its own :class:`Decoding` policy (its errors, YAML's scalars,
the settings' rules).
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
    """``value`` (plain data) as type ``tp``, with the formats' rules (:class:`Decoding`): errors are
    :class:`FormatError` naming ``where`` and ``key``."""
    return decode(tp, value, key, Decoding(where))


class Decoding:
    """What one user of :func:`decode` decides for itself; the walk over the type hints is shared.

    This base is the formats' policy: a :class:`FormatError` naming the file and the key, every unknown
    key of a record named at once before any value is read, then its fields in declaration order, and
    a value taken only when it already is of its type. ``pipelines.config`` subclasses it for configs.
    """

    error: type[ValueError] = FormatError
    # True: a mapping's keys in the order it gives them, an unknown one reported where it is met
    keys_in_given_order = False

    def __init__(self, where: str = "") -> None:
        self.where = where

    def given(self, tp: Any, value: Any, key: str) -> Any:
        """``value`` before it is checked against ``tp``: a policy may convert it, or refuse it (raise)."""
        return value

    def check(self, field: dataclasses.Field[Any], value: Any, key: str) -> None:
        """Rules beyond the type, run on a dataclass field's decoded value (raise to refuse it)."""

    def wrong(self, tp: Any, value: Any, key: str) -> str:
        """The message for a ``value`` that is not a ``tp``."""
        return _wrong(tp, value, self.where, key)

    def unknown(self, cls: type, names: list[str], unknown: list[str], key: str) -> str:
        """The message for keys ``unknown`` in a ``cls`` at ``key``, whose fields are ``names``."""
        return (f"{self.where}: unknown key(s) {', '.join(_join(key, u) for u in unknown)} "
                f"(a {cls.__name__} has {', '.join(names)})")

    def missing(self, key: str) -> str:
        """The message for a field without a default that the value lacks."""
        return f"{self.where}: key '{key}' is missing"


def decode(tp: Any, value: Any, key: str, policy: Decoding) -> Any:
    """``value`` (plain data) as type ``tp``, walking its type hints: dataclasses (a :class:`Record`
    through its own ``from_dict``), unions (``X | None``), ``Literal``, lists, tuples (from lists),
    dicts, str, int, float (ints accepted), bool and ``Any`` (taken as it is). The one decoder of
    dlpipe's formats and its config: ``policy`` holds what they do differently."""
    value = policy.given(tp, value, key)
    origin = typing.get_origin(tp)
    if tp is Any or tp is object:
        return value
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if issubclass(tp, Record):
            return tp.from_dict(value, policy.where, key)
        return _fields_from(tp, value, key, policy)
    if origin in (types.UnionType, typing.Union):
        return _union(tp, value, key, policy)
    if origin is typing.Literal:
        if any(value == choice and type(value) is type(choice) for choice in typing.get_args(tp)):
            return value
        raise policy.error(policy.wrong(tp, value, key))
    if origin in (list, tuple, dict):
        return _container(tp, value, key, policy)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise policy.error(policy.wrong(tp, value, key))
    if tp in (int, str, bool):
        if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
            return value
        raise policy.error(policy.wrong(tp, value, key))
    if isinstance(tp, type) and isinstance(value, tp):  # e.g. torch tensors inside checkpoints
        return value
    raise policy.error(policy.wrong(tp, value, key))


def _union(tp: Any, value: Any, key: str, policy: Decoding) -> Any:
    """The first option of union ``tp`` that takes ``value`` (None for an optional's None)."""
    options = typing.get_args(tp)
    if value is None and type(None) in options:
        return None
    problems = []
    for option in options:
        if option is type(None):
            continue
        try:
            return decode(option, value, key, policy)
        except (FormatError, policy.error) as e:  # a Record inside answers with a FormatError
            problems.append(str(e))
    raise policy.error(problems[-1] if problems else policy.wrong(tp, value, key))


def _container(tp: Any, value: Any, key: str, policy: Decoding) -> Any:
    """A list, tuple or dict ``tp``, each item decoded (items named ``key[i]``, entries ``key.name``)."""
    origin = typing.get_origin(tp)
    if origin is dict:
        if not isinstance(value, dict):
            raise policy.error(policy.wrong(tp, value, key))
        _, val_tp = typing.get_args(tp) or (str, Any)
        return {k: decode(val_tp, v, _join(key, str(k)), policy) for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        raise policy.error(policy.wrong(tp, value, key))
    args = typing.get_args(tp)
    item = args[0] if args else Any
    items = [decode(item, v, f"{key}[{i}]", policy) for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _fields_from(cls: type, value: Any, key: str, policy: Decoding) -> Any:
    """Dataclass ``cls`` from mapping ``value``: each field decoded, then checked by ``policy``."""
    if not isinstance(value, dict):
        raise policy.error(policy.wrong(cls, value, key))
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if policy.keys_in_given_order:  # then the fields the mapping lacks
        names = list(value) + [n for n in fields if n not in value]
    else:
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise policy.error(policy.unknown(cls, list(fields), unknown, key))
        names = list(fields)
    kwargs = {}
    for name in names:
        if name not in fields:
            raise policy.error(policy.unknown(cls, list(fields), [name], key))
        if name in value:
            kwargs[name] = decode(hints[name], value[name], _join(key, name), policy)
            policy.check(fields[name], kwargs[name], _join(key, name))
        elif fields[name].default is dataclasses.MISSING and fields[name].default_factory is dataclasses.MISSING:
            raise policy.error(policy.missing(_join(key, name)))
    return cls(**kwargs)


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _wrong(tp: Any, value: Any, where: str, key: str) -> str:
    shown = repr(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return f"{where}: key '{key or '(top level)'}' expects {type_name(tp)}, got {shown}"


def type_name(tp: Any) -> str:
    """``tp`` as a message names it: ``int``, ``list[int]``, ``one of 'a', 'b'`` for a ``Literal``."""
    if typing.get_origin(tp) is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(tp)))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class Record:
    """Base of dlpipe's frozen format dataclasses: ``to_dict`` / ``from_dict`` / ``to_json`` /
    ``from_json``. A format whose file shape differs from its fields overrides the two dict methods."""

    def to_dict(self) -> dict[str, Any]:
        fields = dataclasses.fields(self)  # type: ignore[arg-type]  # a Record's subclasses are all dataclasses
        return {f.name: to_plain(getattr(self, f.name)) for f in fields}

    @classmethod
    def from_dict(cls: type[T], value: Any, where: str = "", key: str = "") -> T:
        record: T = _fields_from(cls, value, key, Decoding(where or cls.__name__))  # an instance of cls
        return record

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
