"""Every command the README and docs/ quote (raft-train, raft-compare, the examples and benchmarks) parses with the
project's own argument parsers: a renamed or removed flag fails here, not on a reader's machine."""

import argparse
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").glob("*.md"))]
PAGES += sorted((ROOT / "examples").glob("*/README.md"))


class Parsed(Exception):
    """Raised by the patched parser once the command line is parsed, so that nothing runs."""


def quoted_commands() -> list[tuple[str, list[str]]]:
    """(where, argv) of every command line in the pages' ```bash blocks that runs one of the project's entry
    points; backslash continuations joined, comments dropped, placeholders (`...`) and YAML configs left out."""
    commands = []
    for page in PAGES:
        in_block, pending = False, ""
        for number, line in enumerate(page.read_text().splitlines(), start=1):
            if line.startswith("```"):
                in_block = line.strip() in ("```bash", "```sh", "```shell") and not in_block
                continue
            if not in_block:
                continue
            pending += line.rstrip("\\") + " "
            if line.endswith("\\"):
                continue
            words, pending = shell_words(pending), ""
            for command in split_commands(words):
                argv = entry_point(command)
                if argv and "..." not in argv and "--config" not in argv:
                    commands.append((f"{page.relative_to(ROOT)}:{number}", argv))
    return commands


def shell_words(line: str) -> list[str]:
    """The words of a shell line, with `;`, `&&` and `|` as words of their own, comments dropped, and each shell
    variable (a loop's `$seed`, a `$POLICY`) standing for 0."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return [re.sub(r"\$\{?\w+\}?", "0", word) for word in lexer]


def split_commands(words: list[str]) -> list[list[str]]:
    """A shell line's words cut into its commands at `&&`, `||`, `;` and `|`."""
    commands = [[]]
    for word in words:
        if word in ("&&", "||", ";", "|"):
            commands.append([])
        else:
            commands[-1].append(word)
    return [command for command in commands if command]


def entry_point(words: list[str]) -> list[str] | None:
    """The project command in `words` (after `accelerate launch` and its options, or a Python interpreter), as
    [program, *arguments]; None for any other command."""
    for index, word in enumerate(words):
        name = word.split("/")[-1]
        if name in ("raft-train", "raft-compare"):
            return [name, *words[index + 1 :]]
        if word.endswith(".py") and word.split("/")[0] in ("examples", "benchmarks"):
            return [word, *words[index + 1 :]]
    return None


def parse(argv: list[str], monkeypatch) -> None:
    """Run the command's entry point up to its argument parsing; a parse error fails the test."""
    original = argparse.ArgumentParser.parse_known_args

    def parse_and_stop(self, args=None, namespace=None):
        _, unknown = original(self, args, namespace)
        if unknown:
            pytest.fail(f"{' '.join(argv)}: the parser does not know {unknown}")
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", parse_and_stop)
    program, arguments = argv[0], argv[1:]
    monkeypatch.setattr(sys, "argv", [program, *arguments])
    try:
        if program == "raft-train":
            from raft_trainer import cli

            cli.main(arguments)
        elif program == "raft-compare":
            from raft_trainer.compare import cli as compare_cli

            compare_cli.main(arguments)
        else:
            runpy.run_path(str(ROOT / program), run_name="__main__")
    except Parsed:
        return
    except SystemExit as error:
        pytest.fail(f"{' '.join(argv)}: the parser refused it (exit {error.code})")
    pytest.fail(f"{' '.join(argv)}: ran to the end without parsing its arguments")


COMMANDS = quoted_commands()


def needs_parsing(argv: list[str]) -> bool:
    """Whether a command has arguments to check: a script quoted without any is only checked to exist (run, it
    would do its work)."""
    return argv[0] in ("raft-train", "raft-compare") or len(argv) > 1


def test_the_pages_quote_commands():
    programs = {argv[0] for _, argv in COMMANDS}
    assert {"raft-train", "raft-compare", "examples/llm/raft_arithmetic.py"} <= programs


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_quoted_command_parses(where, argv, monkeypatch, tmp_path):
    assert argv[0] in ("raft-train", "raft-compare") or (ROOT / argv[0]).is_file(), f"{where}: no {argv[0]}"
    if needs_parsing(argv):
        monkeypatch.chdir(tmp_path)  # nothing a parser's side effect writes lands in the checkout
        parse(argv, monkeypatch)
