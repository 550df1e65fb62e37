"""Checking a config's values against its dataclass annotations, for every config class: the models' and the run's."""
from __future__ import annotations

import dataclasses
import functools
import types
import typing

from .errors import ConfigError


def check_types(config_class: type, values: dict, where: str = "") -> None:
    """Refuse a value that does not fit its field's annotation, in one line naming the field, before
    validation compares it (``'abc' <= 0`` would only say TypeError). Nested configs check their own."""
    annotations = _field_types(config_class)
    for key, value in values.items():
        annotation = annotations[key]
        if not dataclasses.is_dataclass(annotation) and not _fits(value, annotation):
            dotted = f"{where}.{key}" if where else key
            raise ConfigError(f"{dotted} must be {_describe(annotation)}, not {value!r}")


_field_types = functools.cache(typing.get_type_hints)  # the annotations are strings (__future__)
_TYPE_NAMES = {bool: ("true or false", "true or false values"), int: ("an integer", "integers"),
               float: ("a number", "numbers"), str: ("a string", "strings"), dict: ("a mapping", "mappings"),
               type(None): ("null", "nulls")}


def _fits(value, annotation) -> bool:
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        return any(_fits(value, argument) for argument in arguments)
    if origin in (tuple, list):  # YAML and JSON give lists; the configs keep tuples
        return isinstance(value, (tuple, list)) and all(_fits(item, arguments[0]) for item in value)
    if isinstance(value, bool):  # a bool is an int to isinstance, but true is no batch size
        return annotation is bool
    # Python's own numbers only: a numpy or torch scalar would reach the JSON and YAML the config is saved as.
    return isinstance(value, (int, float) if annotation is float else annotation)


def _describe(annotation, plural: bool = False) -> str:
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (types.UnionType, typing.Union):
        return " or ".join(_describe(argument, plural) for argument in arguments)
    if origin in (tuple, list):
        return f"{'lists' if plural else 'a list'} of {_describe(arguments[0], plural=True)}"
    return _TYPE_NAMES[annotation][plural]
