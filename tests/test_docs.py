"""The README and the docs site against the code: what they name must exist, what they show must run.

Fast (no training, no docs build: `make docs` and `make test` build the site strictly). Each check
is a small function with a test that feeds it something wrong, so that it can fail.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from fkt.cli import build_parser
from fkt.config import Config
from fkt.presets import preset_names

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
GENERATED = {"reference/configuration.md", "reference/cli.md"}  # written by docs/hooks/reference.py at build time
SECTIONS = tuple(name for name, f in Config.model_fields.items() if isinstance(f.annotation, type)
                 and issubclass(f.annotation, BaseModel))


def doc_pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "hooks" not in p.relative_to(DOCS).parts)


def texts() -> dict[str, str]:
    """README and every docs page, by path relative to the repository."""
    return {str(p.relative_to(ROOT)): p.read_text() for p in [README, *doc_pages()]}


def hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", DOCS / "hooks" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- fkt commands shown in the docs -----------------------------------------------------------
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def shell_lines(text: str) -> list[str]:
    """The command lines of a page's sh/bash/console blocks, continuations joined."""
    lines = []
    for lang, body in FENCE.findall(text):
        if lang not in ("sh", "bash", "shell", "console", ""):
            continue
        for line in body.replace("\\\n", " ").splitlines():
            lines.append(line.strip())
    return lines


def inline_commands(text: str) -> list[str]:
    """`fkt ...` in inline code, where it is written out in full (no [optional] or NAME placeholders)."""
    found = []
    for code in re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text):
        if code.startswith("fkt ") and "[" not in code.replace('"grid', "").replace('"evaluate', "") \
                and not re.search(r"\b[A-Z]{3,}\b", code) and " --out " in code:
            found.append(code)
    return found


def fkt_argv(line: str) -> list[str] | None:
    """The arguments after `fkt` (`fkt`, `.venv/bin/fkt`, `python -m fkt`), or None: not an fkt command."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return None
    for i, token in enumerate(tokens):
        if token == "fkt" and (i == 0 or tokens[i - 1] == "-m") or token.endswith("/fkt"):
            return tokens[i + 1:]
    return None


def parse_error(argv: list[str]) -> str | None:
    """Why `fkt ARGV` would be refused by the parser (None: it parses)."""
    try:
        build_parser().parse_args(argv)
    except SystemExit as exit:
        return None if exit.code in (0, None) else f"exit {exit.code}"
    return None


def shown_commands() -> list[tuple[str, str]]:
    commands = []
    for name, text in texts().items():
        for line in shell_lines(text) + inline_commands(text):
            if line.startswith("make ") or fkt_argv(line) is None:
                continue
            commands.append((name, line))
    return commands


def test_the_docs_show_fkt_commands():
    names = {name for name, _ in shown_commands()}
    assert "README.md" in names and len(shown_commands()) > 40


@pytest.mark.parametrize("page,line", shown_commands(), ids=lambda v: v[:60] if isinstance(v, str) else v)
def test_every_fkt_command_shown_parses(page, line, capsys):
    assert parse_error(fkt_argv(line)) is None, f"{page}: `{line}` is refused by fkt's parser"


def test_a_wrong_command_is_caught(capsys):
    assert parse_error(["train", "--no-such-flag", "--out", "x"]) is not None
    assert parse_error(["reproduce", "--preset", "quick"]) is not None  # --out is required
    assert fkt_argv("torchrun --nproc_per_node 4 -m fkt train --out x") == ["train", "--out", "x"]
    assert fkt_argv("srun .venv/bin/fkt datasets") == ["datasets"]
    assert fkt_argv("make demo") is None


# --- presets and config fields named in the docs -------------------------------------------
def presets_named(text: str) -> set[str]:
    named = set(re.findall(r"--(?:preset|config)[ =]([\w.-]+)", text))
    named |= set(re.findall(r"`((?:paper|few-labels|objectives|fusion|own-data|quick)[\w-]*)`", text))
    return {n for n in named if not n.endswith((".yaml", ".yml")) and n != "NAME"}


def test_every_preset_named_exists():
    known = set(preset_names())
    for name, text in texts().items():
        missing = presets_named(text) - known
        assert not missing, f"{name} names presets that do not exist: {sorted(missing)}"


def test_an_unknown_preset_is_caught():
    assert presets_named("run `paper-table9` or --preset nope") == {"paper-table9", "nope"}


FIELD = re.compile(r"(?<![\w./$-])(" + "|".join(SECTIONS) + r")\.([a-z_][\w]*(?:\.[\w-]+)*)")
FILE_SUFFIXES = {"py", "json", "pt", "onnx", "yaml", "md", "txt", "csv", "png", "html", "ckpt"}


def unknown_field(dotted: str) -> str | None:
    """The part of `section.field[.sub]` that is not a config field (None: it is one, or it reaches
    a mapping such as grid.axes, whose keys are free)."""
    model: type = Config
    for part in dotted.split("."):
        fields = model.model_fields
        if part not in fields:
            return part
        annotation = fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return None


def fields_named(text: str) -> set[str]:
    return {m.group(0) for m in FIELD.finditer(text) if m.group(0).rsplit(".", 1)[-1] not in FILE_SUFFIXES}


def test_every_config_field_named_exists():
    for name, text in texts().items():
        wrong = {f for f in fields_named(text) if unknown_field(f)}
        assert not wrong, f"{name} names config fields that do not exist: {sorted(wrong)}"


def test_an_unknown_field_is_caught():
    assert unknown_field("data.no_such_field") == "no_such_field"
    assert unknown_field("optim.ssl.lr") is None and unknown_field("grid.axes.data.labels_per_class") is None
    assert fields_named("`--set trainer.sync_batchnorm=false`, fkt.data.sampler, model.json, optim.py") == {
        "trainer.sync_batchnorm"}


# --- the README ------------------------------------------------------------------------------
def test_readme_is_a_front_door():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    for needed in ("make demo", "make test", "pip install .", "pip install '.[onnx]'", ".venv/bin/fkt",
                   ". .venv/bin/activate", "2304.01354"):
        assert needed in text, needed


def heading_slugs(path: Path) -> set[str]:
    from markdown.extensions.toc import slugify

    text = FENCE.sub("", path.read_text())
    return {slugify(h.replace("`", ""), "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def broken_links(page: Path) -> list[str]:
    """Relative links of a Markdown file whose file (or heading) does not exist."""
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve()
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in heading_slugs(path):
            broken.append(target)
    return broken


def test_readme_links_resolve():
    assert broken_links(README) == []


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "a.md").write_text("# A page\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#a-page) [file](missing.md) [anchor](a.md#nope) [web](https://x.org)\n")
    assert broken_links(page) == ["missing.md", "a.md#nope"]


# --- the site ------------------------------------------------------------------------------
def nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        if isinstance(entry, str):
            pages.append(entry)
        elif isinstance(entry, dict):
            for value in entry.values():
                pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_every_page_is_in_the_nav_and_every_nav_entry_exists():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = nav_pages(config["nav"])
    files = {str(p.relative_to(DOCS)) for p in doc_pages()}
    assert sorted(files - set(nav)) == [], "pages missing from mkdocs.yml's nav"
    assert sorted(set(nav) - files - GENERATED) == [], "nav entries without a page"
    assert config["site_dir"].startswith("build/")  # git ignores build/


def test_the_docs_build_fetches_nothing():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    assert config["theme"]["font"] is False  # no Google fonts
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in config.get("plugins", [])]
    assert not {"privacy", "social", "offline"} & set(plugins)
    makefile = (ROOT / "Makefile").read_text()
    test_target = re.search(r"^test:.*$", makefile, re.M).group(0)
    assert "docs" in test_target and "mkdocs build --strict" in makefile


def test_the_configuration_reference_covers_every_field():
    page = hook().configuration_markdown()

    def leaves(model, prefix=""):
        for name, field in model.model_fields.items():
            if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
                yield from leaves(field.annotation, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}", field.description

    for dotted, description in leaves(Config):
        row = next((line for line in page.splitlines() if line.startswith(f"| `{dotted}` |")), None)
        assert row is not None, f"{dotted} is missing from the configuration reference"
        if description:
            assert description.replace("|", "\\|").replace("\n", " ") in row
    for name in preset_names():
        assert f"| `{name}` |" in page, f"preset {name} is missing from the configuration reference"


def test_the_cli_reference_covers_every_subcommand_and_flag():
    page = hook().cli_markdown()
    for name, (sub, _) in hook().subcommands(build_parser()).items():
        assert f"## `fkt {name}`" in page
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert f"`{option}`" in page, f"fkt {name} {option}"


# --- the project files -----------------------------------------------------------------------
def test_version_changelog_and_citation_agree():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.M).group(1) == version
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert str(citation["version"]) == version
    assert citation["preferred-citation"]["identifiers"][0]["value"].endswith("2304.01354")
    assert "MIT License" in (ROOT / "LICENSE").read_text()


def test_docs_tools_are_pinned_exactly():
    pins = {line.split("==")[0]: line for line in (ROOT / "requirements-dev.txt").read_text().splitlines()
            if "==" in line}
    assert "mkdocs" in pins and "mkdocs-material" in pins
