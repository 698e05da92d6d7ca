"""JSON encoding of the SDK's frozen models, for the read cache and local records.

Models are frozen dataclasses made of str, int, float, bool, None, enums, nested models,
tuples, lists, frozensets and mappings. Decoding follows the type hints, so what comes
back from disk is re-validated by each model's ``__post_init__``: a corrupted record
raises a :class:`~superapp_sdk.StoreError` naming the model, never a half-built value.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from superapp_sdk._errors import StoreError

__all__ = ["decode", "dumps", "encode", "loads"]

T = TypeVar("T")


def encode(value: Any) -> Any:
    """A JSON-able form of ``value``."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode(v) for v in value]
    if isinstance(value, frozenset | set):
        return sorted(encode(v) for v in value)
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _decode(tp: Any, data: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return data
    if origin in (typing.Union, types.UnionType):
        if data is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(arg, data, where)
            except (TypeError, ValueError, KeyError) as exc:
                errors.append(exc)
        raise ValueError(f"{where}: {data!r} fits none of {args}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object for {tp.__name__}")
        hints = _hints(tp)
        kwargs = {
            f.name: _decode(hints[f.name], data[f.name], f"{where}.{f.name}")
            for f in dataclasses.fields(tp)
            if f.init and f.name in data
        }
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(data)
    if origin in (list, tuple, frozenset, set):
        if not isinstance(data, list):
            raise ValueError(f"{where}: expected a list")
        inner = args[0] if args else Any
        items = [_decode(inner, v, where) for v in data]
        return origin(items) if origin is not list else items
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected an object")
        value_type = args[1] if len(args) == 2 else Any
        return {k: _decode(value_type, v, where) for k, v in data.items()}
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if isinstance(tp, type) and not isinstance(data, tp):
        raise ValueError(f"{where}: expected {tp.__name__}, got {type(data).__name__}")
    return data


def decode(cls: type[T], data: Any) -> T:
    """Rebuild a ``cls`` from :func:`encode`'s output; ``ValueError`` when it does not fit."""
    return _decode(cls, data, cls.__name__)  # type: ignore[no-any-return]


def dumps(value: Any) -> bytes:
    """``encode`` then compact UTF-8 JSON."""
    return json.dumps(encode(value), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def loads(cls: type[T], raw: bytes, *, what: str) -> T:
    """Decode a stored record; :class:`StoreError` naming ``what`` when it is corrupt."""
    try:
        return decode(cls, json.loads(raw))
    # RecursionError: garbage nested deeper than the JSON parser goes.
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise StoreError(f"stored {what} is unreadable ({type(exc).__name__}: {exc})") from exc
