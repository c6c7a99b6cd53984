"""MkDocs hook: the configuration and command-line reference pages, generated at every build.

`reference/configuration.md` is written from the pydantic models in `fkt.config` (each field's
dotted name, type, constraints, default and `description=`), `reference/cli.md` from the
parser `fkt.cli.build_parser()` builds (each flag, what it sets, its help). Both exist only in
the built site, never in the repository, so they cannot go stale. tests/test_docs.py imports
`configuration_markdown` and `cli_markdown` from here.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "src") not in sys.path:  # a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT / "src"))

CONFIG_PAGE = "reference/configuration.md"
CLI_PAGE = "reference/cli.md"


# --- MkDocs ---------------------------------------------------------------------------------
def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, content in ((CONFIG_PAGE, configuration_markdown()), (CLI_PAGE, cli_markdown())):
        files.append(File.generated(config, uri, content=content))
    return files


# --- the configuration --------------------------------------------------------------------
def type_name(annotation: Any) -> str:
    """A field's type as a reader writes it: `int | None`, `"a" | "b"`, `list["knn" | "linear"]`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(type_name(a) for a in args)}]"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def constraints(field: Any) -> str:
    """`> 0`, `>= 0, < 1`: the bounds pydantic checks (PositiveInt's included)."""
    symbols = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
    metadata = list(field.metadata)
    annotation = field.annotation
    for arg in typing.get_args(annotation) or (annotation,):  # PositiveInt | None
        if typing.get_origin(arg) is typing.Annotated:
            metadata += list(typing.get_args(arg)[1:])
    found = []
    for item in metadata:
        for name, symbol in symbols.items():
            value = getattr(item, name, None)
            if value is not None:
                found.append(f"{symbol} {value}")
    return ", ".join(dict.fromkeys(found))


def shown(value: Any) -> str:
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, Path):
        return f"`{value}`"
    if isinstance(value, (list, dict)) and not value:
        return f"`{value!r}`"
    return f'`"{value}"`' if isinstance(value, str) else f"`{value}`"


def is_model(annotation: Any) -> bool:
    from pydantic import BaseModel

    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def config_rows(model: type, default: Any, prefix: str) -> list[tuple[str, str, str, str]]:
    """(dotted field, type, default, description) for every field of `model`, nested sections
    flattened, defaults taken from `default` (the parent's default instance) where there is one."""
    from pydantic_core import PydanticUndefined

    rows = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        value = getattr(default, name) if default is not None else field.default
        if is_model(field.annotation):
            rows += config_rows(field.annotation, value, dotted + ".")
            continue
        if value is PydanticUndefined:
            value_text = "required"
        elif field.default_factory is not None and default is None:
            value_text = shown(field.default_factory())
        else:
            value_text = shown(value)
        kind = type_name(field.annotation)
        bounds = constraints(field)
        rows.append((dotted, f"`{kind}`" + (f" ({bounds})" if bounds else ""), value_text,
                     (field.description or "").replace("|", "\\|").replace("\n", " ")))
    return rows


def configuration_markdown() -> str:
    from fkt.config import Config

    lines = [
        "# Configuration reference",
        "",
        "Generated from the pydantic models in `src/fkt/config.py` when the site is built: every",
        "field's dotted name, type, default and description, as the code has them. A preset",
        "(`--preset NAME`, `src/fkt/presets/`) or your own YAML file (`--config FILE`) overrides",
        "the defaults, flags override the file, and `--set section.field=value` overrides anything.",
        "Unknown keys and wrong types are refused in one line naming the field.",
        "",
    ]
    top: list[tuple[str, str, str, str]] = []
    for name, field in Config.model_fields.items():
        if not is_model(field.annotation):
            top += [row for row in config_rows(Config, None, "") if row[0] == name]
            continue
        section = field.annotation
        lines += [f"## `{name}`", ""]
        doc = (section.__doc__ or "").strip()
        if doc and not doc.startswith(("Usage docs", "!!!", "A base class")):
            lines += [" ".join(doc.split()), ""]
        lines += table(config_rows(section, field.default, name + "."))
    lines += ["## Top level", ""] + table(top)
    lines += ["## Presets", "", "Shipped in `src/fkt/presets/` (`--preset NAME`); each file's opening comment says",
              "what it is for and how it was sized. Its first sentence:", "",
              "| preset | what it is |", "|---|---|"]
    lines += [f"| `{name}` | {cell(summary)} |" for name, summary in preset_summaries().items()]
    return "\n".join(lines) + "\n"


def preset_summaries() -> dict[str, str]:
    """Each preset's name and the first sentence of its opening comment."""
    from fkt.presets import find_preset, preset_names

    out = {}
    for name in preset_names():
        words = []
        for line in find_preset(name).read_text().splitlines():
            if not line.startswith("#") or line.startswith("#   ") or not line.strip("# "):
                break
            words.append(line.lstrip("#").strip())
        text = " ".join(words).removeprefix(f"{name}:").strip()
        cut = re.search(r"[.:](\s|$)", text)
        summary = (text[: cut.start()] if cut else text).strip()
        out[name] = summary[:1].upper() + summary[1:] if summary else "(no comment)"
    return out


def cell(text: str) -> str:
    """Text for one cell of a Markdown table: pipes escaped, one line."""
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    out = ["| field | type | default | description |", "|---|---|---|---|"]
    out += [f"| `{field}` | {kind} | {default} | {text} |" for field, kind, default, text in rows]
    return out + [""]


# --- the command line ---------------------------------------------------------------------
def subcommands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    """Each subcommand's parser and its one-line help, as `fkt --help` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            return {name: (sub, helps.get(name, "")) for name, sub in action.choices.items()}
    return {}


def flag_rows(parser: argparse.ArgumentParser) -> list[str]:
    actions = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._VersionAction))]
    if not actions:
        return ["No flags.", ""]
    rows = ["| flag | sets | values | default | help |", "|---|---|---|---|---|"]
    for action in actions:
        names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.metavar or action.dest}`"
        sets = f"`{action.dest}`" if "." in action.dest or action.dest == "seed" else ""
        if action.choices:
            values = " \\| ".join(f"`{c}`" for c in action.choices)
        elif action.nargs == 0:
            values = "(a switch)"
        else:
            values = (action.type.__name__ if isinstance(action.type, type) else "text") + (
                " ..." if action.nargs in ("+", "*") else "")
        plain = action.default not in (None, argparse.SUPPRESS, False, []) and action.nargs != 0
        default = f"`{action.default}`" if plain else ""
        text = (action.help or "").replace("|", "\\|").replace("\n", " ")
        if action.required:
            text = ("**required.** " + text).strip()
        rows.append(f"| {names} | {sets} | {values} | {default} | {text} |")
    return rows + [""]


def cli_markdown() -> str:
    from fkt.cli import build_parser

    parser = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "Generated from `fkt.cli.build_parser()` when the site is built. A flag that *sets* a",
        "config field is the same as `--set field=value` (see the",
        "[configuration reference](configuration.md)); flags override the preset or file.",
        "",
    ]
    for name, (sub, summary) in subcommands(parser).items():
        lines += [f"## `fkt {name}`", ""]
        lines += [text + "\n" for text in (summary, " ".join((sub.description or "").split())) if text]
        lines += flag_rows(sub)
    return "\n".join(lines)
