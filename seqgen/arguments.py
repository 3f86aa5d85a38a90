"""The one argument grammar of seqgen's commands (and its benchmarks).

A command's flags are the fields of typed dataclasses (jsonargparse), spelled with
underscores as the fields are (`--max_new_tokens`), with the fields' docstrings as help,
and `--config FILE` for YAML. A bool flag alone means true; a list flag repeats.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from seqgen.errors import SeqgenError

_CACHE = "caches live under $SEQGEN_CACHE (default ~/.cache/seqgen)"
RETIRED = {
    "data.cache_dir": _CACHE,
    "cache_dir": _CACHE,
    "data.num_workers": "set train.num_workers",
    "data.num_proc": "parsing uses every core",
}
"""Settings that are gone, and what replaces them."""


def config_parser(
    prog: str, description: str | None, *config_classes: type, skip: set[str] = frozenset()
):
    """A parser whose flags are the fields of `config_classes` (flat), and --config."""
    from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(
        prog=prog, description=description, exit_on_error=False, default_meta=False
    )
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config file.")
    seen: set[str] = set()
    for config_class in config_classes:
        names = {f.name for f in fields(config_class)} - set(skip)
        if names & seen:
            raise SeqgenError(
                f"{prog}: {config_class.__name__} repeats options {', '.join(sorted(names & seen))}"
            )
        seen |= names
        parser.add_class_arguments(config_class, as_group=False, skip=set(skip) | (seen - names))
    return parser


def flags_of(*config_classes: type) -> dict[str, Any]:
    """The type of each top-level field of the classes, by name."""
    found: dict[str, Any] = {}
    for config_class in config_classes:
        hints = typing.get_type_hints(config_class)
        found.update({f.name: hints[f.name] for f in fields(config_class)})
    return found


def _kind(hint: Any) -> str | None:
    """ "bool" or "list" for flags that take no value or repeat, else None."""
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = [a for a in typing.get_args(hint) if a is not type(None)] if union else [hint]
    if args == [bool]:
        return "bool"
    if typing.get_origin(args[0]) is list:
        return "list"
    return None


def normalize(argv: Sequence[str], flags: dict[str, Any]) -> list[str]:
    """The grammar's conveniences, rewritten into jsonargparse's: a bool flag alone means
    true (`--stream`); a list flag repeats (`--stop a --stop b`) or takes several values
    (`--input a b`). A flag spelled with hyphens where the field has underscores is an error
    that says so."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":  # what follows is passed on untouched
            return out + list(argv[i - 1 :])
        if not arg.startswith("--"):
            out.append(arg)
            continue
        new, eq, value = arg[2:].partition("=")
        if new not in flags and new.replace("-", "_") in flags:
            raise SeqgenError(
                f"--{new}: flags are spelled as their fields, with underscores: "
                f"--{new.replace('-', '_')}"
            )
        kind = _kind(flags.get(new))
        if kind == "bool" and not eq and (i == len(argv) or argv[i].startswith("--")):
            out.append(f"--{new}=true")
        elif kind == "list" and not (eq and value.startswith("[")):
            values = [value] if eq else []
            while not eq and i < len(argv) and not argv[i].startswith("--"):
                values.append(argv[i])
                i += 1
            if values and values[0].startswith("["):
                out += [f"--{new}", *values]
            else:
                out += [a for v in values for a in (f"--{new}+", v)] or [f"--{new}"]
        else:
            out.append(f"--{new}{eq}{value}")
    return out


def parse(parser, argv: Sequence[str]):
    """Parse and instantiate; errors name the offending key (and the config file)."""
    files = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"]
    sections = {action.dest.split(".")[0] for action in parser._actions if "." in action.dest}
    configs = {file: check_sections(file, sections) for file in files}
    check_retired(argv, configs)
    try:
        return parser.instantiate(parser.parse_args(list(argv)))
    except argparse.ArgumentError as err:
        where = f" (config: {', '.join(files)})" if files else ""
        raise SeqgenError(f"{str(err).strip()}{where}") from None


def check_sections(file: str, sections: set[str]) -> dict[str, Any]:
    """A config file is a mapping, and each of its sections (model:, train:, data:, ...)
    a mapping of settings: anything else is an error naming the file and the key. Returns
    the file's values."""
    import yaml

    try:
        values = yaml.safe_load(Path(file).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise SeqgenError(f"{file}: cannot read the config ({err})") from None
    if values is None:
        raise SeqgenError(f"{file}: the config is empty")
    if not isinstance(values, dict):
        raise SeqgenError(
            f"{file}: a config maps keys to values (key: value lines), not a "
            f"{type(values).__name__}"
        )
    for key in sorted(sections & set(values)):
        if not isinstance(values[key], dict):
            raise SeqgenError(
                f"{file}: `{key}:` is a section of settings (indented key: value "
                f"lines), got {values[key]!r}"
            )
    return values


def check_retired(argv: Sequence[str], configs: dict[str, dict[str, Any]]) -> None:
    """A setting that is gone, on the command line or in a config file (its values by
    file name), is an error that says what replaced it, naming the file."""
    for arg in argv:
        key = arg[2:].split("=", 1)[0] if arg.startswith("--") else None
        if key in RETIRED:
            raise SeqgenError(f"--{key} is gone: {RETIRED[key]}")
    for file, values in configs.items():
        for key, instead in RETIRED.items():
            section, _, name = key.rpartition(".")
            found = values.get(section) if section else values
            if isinstance(found, dict) and name in found:
                raise SeqgenError(f"{file}: {key} is gone: {instead}")


def build(config_class: type, values: Any):
    """`config_class` from the parsed values of its fields; its checks become errors."""
    try:
        return config_class(
            **{f.name: values[f.name] for f in fields(config_class) if f.name in values}
        )
    except (TypeError, ValueError) as err:
        raise SeqgenError(str(err)) from None


def given(argv: Sequence[str], key: str) -> str | None:
    """The value of `--key` on the command line (the last one wins), else of `key:` in the
    --config file(s)."""
    value = None
    for i, arg in enumerate(argv):
        if arg == f"--{key}" and i + 1 < len(argv):
            value = argv[i + 1]
        elif arg.startswith(f"--{key}="):
            value = arg.split("=", 1)[1]
    if value is not None:
        return value
    import yaml

    for i, arg in enumerate(argv[:-1]):
        if arg == "--config":
            try:
                values = yaml.safe_load(Path(argv[i + 1]).read_text())
            except (OSError, yaml.YAMLError) as err:
                raise SeqgenError(f"{argv[i + 1]}: cannot read the config ({err})") from None
            if isinstance(values, dict) and values.get(key) is not None:
                value = str(values[key])
    return value
