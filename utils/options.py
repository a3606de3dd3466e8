"""Declared options: what a registered attack or model takes from the command line.

An :class:`Option` names one keyword argument of a constructor and describes the flag
that feeds it (type, default, help). Attacks and models list their options; the command
line collects the flags from the registries, so a new attack or model with a new option
needs no change to the parser. Several entries may share one option object (``--eps`` is
PGD's, BIM's and FGSM's); an option declared twice with different settings is an error.
"""

from __future__ import annotations

import argparse
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Sequence


@dataclass(frozen=True)
class Option:
    """One keyword argument and the flag that sets it.

    Args:
        name: the flag's name (``--{name}``) and its key in ``args.json``; also the
            constructor's keyword unless ``keyword`` names another.
        type: parser type (``int``, ``float``, ``str``; ``bool`` for a store-true switch).
        default: flag default (a value as typed, before ``scale``).
        help: flag help text.
        choices: allowed values, or ``None``.
        nargs: argparse ``nargs`` (``"+"`` for lists such as ``--block_size``).
        scale: the constructor receives ``value * scale`` (``--eps 4`` on the [0, 255]
            scale reaches the attack as ``4 / 255``); lists are converted to tuples.
        minimum: smallest allowed value (inclusive), checked together with finiteness.
        keyword: the constructor's keyword when it differs from ``name``.
    """

    name: str
    type: Callable = float
    default: Any = None
    help: str = ""
    choices: Optional[Sequence[Any]] = None
    nargs: Optional[str] = None
    scale: Optional[float] = None
    minimum: Optional[float] = None
    keyword: Optional[str] = None

    def add_to(self, group) -> None:
        """Add the flag to an argparse parser or group."""
        flag = f"--{self.name}"
        if self.type is bool:
            group.add_argument(flag, action="store_true", help=self.help)
            return
        kwargs: dict = dict(type=self.type, default=self.default, help=self.help)
        if self.choices is not None:
            kwargs["choices"] = tuple(self.choices)
        if self.nargs is not None:
            kwargs["nargs"] = self.nargs
        group.add_argument(flag, **kwargs)

    def check(self, value: Any) -> None:
        """Raise ``ValueError`` for a non-finite number or one below ``minimum``."""
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if not math.isfinite(v):
                raise ValueError(f"--{self.name} must be a finite number, got {v}")
            if self.minimum is not None and v < self.minimum:
                raise ValueError(f"--{self.name} must be at least {self.minimum:g}, got {v}")

    def convert(self, value: Any) -> Any:
        """The constructor's value for a flag value (scaled, lists as tuples)."""
        if isinstance(value, list):
            value = tuple(value)
        if self.scale is not None and value is not None:
            value = value * self.scale
        return value


def collect_options(groups: Iterable[Iterable[Option]]) -> list[Option]:
    """All options of several entries, each once, in order of first appearance.

    Raises:
        ValueError: two different declarations share a name.
    """
    seen: dict[str, Option] = {}
    for options in groups:
        for option in options:
            if option.name in seen and seen[option.name] != option:
                raise ValueError(f"option {option.name!r} is declared twice with different settings: "
                                 f"{seen[option.name]} and {option}")
            seen.setdefault(option.name, option)
    return list(seen.values())


def add_options(group, options: Iterable[Option], skip: Iterable[str] = ()) -> None:
    """Add each option's flag to ``group`` (those named in ``skip`` are already there)."""
    skip = set(skip)
    for option in options:
        if option.name not in skip:
            option.add_to(group)


def option_values(options: Iterable[Option], values: Mapping[str, Any] | argparse.Namespace) -> dict:
    """``{name: value as typed}`` of ``options`` from a namespace or mapping, checked.

    Raises:
        ValueError: a value is not finite or below its minimum.
    """
    source = vars(values) if isinstance(values, argparse.Namespace) else values
    picked = {}
    for option in options:
        value = source.get(option.name, option.default)
        option.check(value)
        picked[option.name] = value
    return picked


def canonical_value(option: Option, value: Any) -> Any:
    """``value`` in the option's own type (``4`` of a float option is ``4.0``; a list becomes a
    tuple), so that one value has one spelling wherever it is printed (folder names, summaries)."""
    if value is None or isinstance(value, bool) or option.type in (bool, str):
        return value
    if isinstance(value, (list, tuple)):
        return tuple(canonical_value(option, v) for v in value)
    if isinstance(value, (int, float)) and option.type in (int, float):
        converted = option.type(value)
        return converted if converted == value else value  # never round a value silently
    return value


def canonical_values(options: Iterable[Option], values: Mapping[str, Any]) -> dict:
    """``values`` with each declared option's value in its canonical spelling (:func:`canonical_value`);
    keys no option declares are kept as they are."""
    declared = {option.name: option for option in options}
    return {key: canonical_value(declared[key], value) if key in declared else value for key, value in values.items()}


def integral_float_spellings(options: Iterable[Option], values: Mapping[str, Any]) -> list[dict]:
    """Every other spelling older folder names may have used for ``values``: each float option
    holding a whole number written also as an int (``eps_4`` beside ``eps_4.0``), in all
    combinations; the canonical spelling itself is not among them."""
    whole = [option.name for option in options if option.type is float and option.name in values
             and isinstance(values[option.name], float) and values[option.name].is_integer()]
    variants = []
    for as_int in itertools.product((False, True), repeat=len(whole)):
        if any(as_int):
            variants.append({**values, **{name: int(values[name]) for name, flag in zip(whole, as_int) if flag}})
    return variants


def constructor_kwargs(options: Iterable[Option], values: Mapping[str, Any]) -> dict:
    """Keyword arguments of the constructor: each option's value converted (:meth:`Option.convert`)."""
    return {option.keyword or option.name: option.convert(values[option.name])
            for option in options if option.name in values}


def lookup(registry: Mapping[str, Any], name: str, flag: str, error: type = ValueError) -> Any:
    """``registry[name]``, or ``error`` naming the flag and every registered name.

    Raises:
        error: ``name`` is not registered.
    """
    if name not in registry:
        raise error(f"unknown {flag} {name!r}; valid names: {', '.join(registry)}")
    return registry[name]
