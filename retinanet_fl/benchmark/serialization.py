"""
Dataclasses to JSON and back, for the benchmarks' results (:mod:`.results`): :func:`to_json`
writes a dataclass's fields as keys in declaration order, :func:`from_json` reads them back by the
fields' type annotations. Field helpers: :func:`optional` (left out while None), :func:`keyed_by`
(a key named by another field's value) and :func:`not_in_json`.
"""

import dataclasses
import typing
from dataclasses import field
from typing import Optional, Type, TypeVar, Union

__all__ = ["optional", "keyed_by", "not_in_json", "to_json", "from_json"]

T = TypeVar("T")
# Field metadata: the field's JSON key is left out while this field's value is None.
_OMIT_IF_NONE = "omit_if_none"
# Field metadata (see keyed_by): the JSON key is this prefix + the named field's value.
_KEY_PREFIX, _KEY_FROM = "key_prefix", "key_from"
# Field metadata: the field has no JSON key of its own (it is part of another field's key).
_NOT_IN_JSON = "not_in_json"


def optional(omit_if_none_of: Optional[str] = None) -> object:
    """
    A field that defaults to None and is left out of the JSON while it is None.

    Args:
        omit_if_none_of: leave the field out while this other field is None instead.

    Returns:
        The dataclass field.
    """
    return field(default=None, metadata={_OMIT_IF_NONE: omit_if_none_of or True})


def keyed_by(prefix: str, name_field: str) -> object:
    """
    A dict field (default empty) whose JSON key is ``prefix`` + the value of the field
    ``name_field``; declare that field with :func:`not_in_json`, so that its value is written once,
    in the key.

    Returns:
        The dataclass field.
    """
    return field(default_factory=dict, metadata={_KEY_PREFIX: prefix, _KEY_FROM: name_field})


def not_in_json(default: object) -> object:
    """
    A field with no JSON key of its own (e.g. one that names another field's key).

    Returns:
        The dataclass field.
    """
    return field(default=default, metadata={_NOT_IN_JSON: True})


def to_json(value: object) -> object:
    """
    The JSON form of a result: dataclasses become dicts (see the module's docstring), tuples
    become lists, everything else stays as it is.

    Args:
        value: a dataclass, or a dict, list, tuple or plain value holding them.

    Returns:
        What ``json.dumps`` writes.
    """
    if dataclasses.is_dataclass(value):
        data = {}
        for f in dataclasses.fields(value):
            omit = f.metadata.get(_OMIT_IF_NONE)
            if f.metadata.get(_NOT_IN_JSON) or (
                omit and getattr(value, f.name if omit is True else omit) is None
            ):
                continue
            key = f.name
            if _KEY_PREFIX in f.metadata:
                key = f.metadata[_KEY_PREFIX] + getattr(value, f.metadata[_KEY_FROM])
            data[key] = to_json(getattr(value, f.name))
        return data
    if isinstance(value, dict):
        return {key: to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(item) for item in value]
    return value


def from_json(kind: Type[T], data: object) -> T:
    """
    Read :func:`to_json`'s output back.

    Args:
        kind: the type to read, as annotated: a dataclass, ``List[...]``,
            ``Dict[str, ...]``, ``Optional[...]`` or a plain type.
        data: the parsed JSON.

    Returns:
        An object of ``kind``.
    """
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        values = {}
        for f in dataclasses.fields(kind):
            key = f.name
            if _KEY_PREFIX in f.metadata:
                key = next(k for k in data if k.startswith(f.metadata[_KEY_PREFIX]))
                values[f.metadata[_KEY_FROM]] = key[len(f.metadata[_KEY_PREFIX]) :]
            if key in data:
                values[f.name] = from_json(hints[f.name], data[key])
        return kind(**values)
    if origin is Union:
        (value_kind,) = [arg for arg in args if arg is not type(None)]
        return None if data is None else from_json(value_kind, data)
    if origin is list:
        return [from_json(args[0], item) for item in data]
    if origin is dict:
        return {key: from_json(args[1], item) for key, item in data.items()}
    return data
