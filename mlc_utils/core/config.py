"""Build typed, validated config dataclasses from plain mappings (YAML, JSON, ``--set``).

Like scikit-learn's parameter validation: an unknown key, a wrong type or a value out of range
is an error that names the parameter by its full path (``image.train.epochs``) and, for a typo,
suggests the closest valid name. Dataclasses declare types with hints (``Literal`` for choices)
and may add a ``check()`` method for ranges. A key or a choice the project renamed keeps working:
the field names its old spelling in its metadata (:func:`renamed_from`) and loading maps it, with a
:class:`RenamedWarning` that names the new one.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
import warnings
from typing import Any, Literal, Mapping, get_args, get_origin


class ParamError(ValueError):
    """A parameter is unknown, mistyped or out of range; the message names it."""


class RenamedWarning(FutureWarning):
    """Something uses a name the project has renamed; it still works, and the message gives the new name.
    (A FutureWarning, so users see it by default: their params files are what should change.)"""


def renamed(old: str, new: str, where: str) -> str:
    """``new``, after warning that ``where`` still uses the old name ``old``."""
    warnings.warn(f"{where}: {old!r} is the old name of {new!r}; it still works, but write {new!r}",
                  RenamedWarning, stacklevel=2)
    return new


def renamed_from(key: str | None = None, **values: str) -> dict:
    """Field metadata for a rename: the field's old ``key``, and old choices as ``old=new`` (``values``).

    ``field(default=..., metadata=renamed_from(frozen="frozen_backbone"))`` lets a params file keep
    ``frozen``; :func:`from_dict` maps both kinds of old name, with a warning."""
    return {"renamed_from": key, "renamed_values": values}


def old_keys(cls: type) -> dict[str, str]:
    """The old key -> field name of ``cls``'s renamed fields."""
    return {f.metadata["renamed_from"]: f.name for f in dataclasses.fields(cls) if f.metadata.get("renamed_from")}


def current_keys(cls: type, mapping: Mapping[str, Any], where: str = "") -> Mapping[str, Any]:
    """``mapping`` with the old keys of ``cls``'s renamed fields under their names now; an error where a
    mapping gives both the old and the new key (which one would win is not something to guess)."""
    renames = {old: new for old, new in old_keys(cls).items() if old in mapping}
    if not renames:
        return mapping
    mapping = dict(mapping)
    for old, new in renames.items():
        if new in mapping:
            raise ParamError(f"{_join(where, old)} and {_join(where, new)}: both are given, and {old!r} is the old name "
                             f"of {new!r}; keep {new!r} only")
        mapping[new] = mapping.pop(old)
        renamed(old, new, _join(where, old))
    return mapping


def current_choice(value: Any, renames: Mapping[str, str], where: str) -> Any:
    """``value``, or its name now when it is an old name in ``renames`` (``{old: new}``), with a warning."""
    return renamed(value, renames[value], where) if isinstance(value, str) and value in renames else value


def _current_value(field: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` (or each item of a list) with a renamed choice replaced by its name now."""
    renames = field.metadata.get("renamed_values")
    if renames and isinstance(value, list):
        return [current_choice(v, renames, _join(where, i)) for i, v in enumerate(value)]
    return current_choice(value, renames, where) if renames else value


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else str(key)


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"list of {_describe(get_args(tp)[0])}" if get_args(tp) else "list"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Return ``value`` converted to type ``tp`` or raise ParamError naming ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in get_args(tp)], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ParamError(f"{where}: {value!r} is not one of {_describe(tp)}{hint}")
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        if len(options) == 2 and type(None) in options:  # Optional[X]: X's own, precise message
            return coerce(next(o for o in options if o is not type(None)), value, where)
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return coerce(option, value, where)
            except ParamError as err:
                errors.append(str(err))
        raise ParamError(f"{where}: expected {_describe(tp)}, got {value!r}")
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ParamError(f"{where}: expected {_describe(tp)}, got {value!r}")
        inner = get_args(tp)[0] if get_args(tp) else Any
        items = [coerce(inner, v, _join(where, i)) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ParamError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ParamError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ParamError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ParamError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ParamError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ParamError(f"{where}: expected {_describe(tp)}, got {value!r}")


def from_dict(cls: type, mapping: Mapping[str, Any] | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``mapping``; unspecified fields keep their defaults."""
    mapping = {} if mapping is None else mapping
    if not isinstance(mapping, Mapping):
        raise ParamError(f"{where or cls.__name__}: expected a mapping of parameters, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    mapping = current_keys(cls, mapping, where)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    names = list(fields)
    unknown = [k for k in mapping if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else f"; known: {', '.join(names)}"
        raise ParamError(f"unknown parameter '{_join(where, key)}'{hint}")
    kwargs = {name: coerce(hints[name], _current_value(fields[name], mapping[name], _join(where, name)), _join(where, name))
              for name in names if name in mapping}
    try:
        obj = cls(**kwargs)
    except ParamError:
        raise
    except (TypeError, ValueError) as err:
        raise ParamError(f"{where or cls.__name__}: {err}") from None
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ParamError:  # raised by a nested from_dict, which named the full path itself
            raise
        except ValueError as err:  # check() names fields relative to this object
            raise ParamError(f"{where + '.' if where else ''}{err}") from None
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass tree back to plain YAML/JSON-able data (a section with ``given()`` gives only what was set)."""
    if callable(getattr(obj, "given", None)):
        return to_dict(obj.given())
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


DEVICE_KINDS = ("cpu", "cuda", "mps")


def check_device_name(value: str, where: str) -> None:
    """``auto``, ``cpu``, ``cuda``, ``cuda:N`` (or ``mps``); the message names ``where``."""
    kind, _, index = str(value).partition(":")
    ok = value == "auto" or (kind in DEVICE_KINDS and (not index or (kind == "cuda" and index.isdigit())))
    require(ok, f"{where}: must be 'auto', 'cpu', 'cuda' or 'cuda:N' (got {value!r})")


def require(condition: bool, message: str) -> None:
    """One-line range checks in ``check()`` methods: ``require(self.epochs >= 0, f"epochs: ...")``."""
    if not condition:
        raise ValueError(message)
