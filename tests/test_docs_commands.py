"""The commands and options the README and docs/ show are the command line's: every ``deepfm ...``
line of their shell blocks parses with ``deepfm``'s own parser, and every ``--option`` the README
names is an option of a ``deepfm`` command (read from the argparse parsers, not from a list)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from deepfm.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = ("bash", "sh", "shell", "console")


def commands(page: Path) -> list[tuple[int, list[str]]]:
    """(line number, argv after ``deepfm``) of each ``deepfm`` command in the page's shell blocks;
    lines with placeholders (``...``, ``[--optional]``) are not commands as written."""
    found = []
    text = page.read_text()
    for block in re.finditer(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if block.group(1) not in SHELL:
            continue
        first = text[: block.start(2)].count("\n") + 1
        joined = re.sub(r"\\\n\s*", " ", block.group(2))  # continuation lines
        for offset, line in enumerate(joined.splitlines()):
            for command in re.split(r"&&|\|\||;", line):
                words = shlex.split(command, comments=True)
                if "deepfm" in words:
                    start = words.index("deepfm") + 1
                elif "python" in words[:1] and words[1:3] == ["-m", "deepfm"]:
                    start = 3
                elif "-m" in words and words[words.index("-m") + 1 : words.index("-m") + 2] == ["deepfm"]:
                    start = words.index("-m") + 2  # torchrun ... -m deepfm train ...
                else:
                    continue
                argv = words[start:]
                if not argv or "..." in argv or any(w.startswith("[") for w in argv):
                    continue
                found.append((first + offset, argv))
    return found


def subcommands() -> dict[str, object]:
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_deepfm_command_shown_parses(page, capsys):
    bad = []
    for line, argv in commands(page):
        if "--help" in argv or "-h" in argv:
            continue
        try:
            build_parser().parse_args(argv)
        except SystemExit:
            error = capsys.readouterr().err.strip().splitlines()[-1:]
            bad.append(f"{page.name}:{line}: deepfm {shlex.join(argv)}: {error}")
    assert not bad, "\n".join(bad)


def test_readme_commands_are_found():
    argvs = [argv for _, argv in commands(ROOT / "README.md")]
    assert ["train", "--dataset", "movielens-1m", "--out", "runs/ml1m"] in argvs
    assert {argv[0] for argv in argvs} >= {"train", "evaluate", "predict", "export", "serve"}


def test_every_option_the_readme_names_exists():
    options = {o for p in subcommands().values() for a in p._actions for o in a.option_strings}
    text = (ROOT / "README.md").read_text()
    spans = re.findall(r"`((?:deepfm |--)[^`]*)`", text)  # `deepfm train --x ...`, `--x N`
    named = {o for span in spans for o in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span)}
    named |= {
        o for cell in re.findall(r"^\| `([^|]*)", text, flags=re.M)
        for o in re.findall(r"--[a-z][a-z0-9-]*", cell)
    }  # fmt: skip
    foreign = {"--nproc-per-node", "--standalone", "--nnodes", "--rdzv-backend", "--rdzv-endpoint"}
    missing = sorted(named - options - foreign)
    assert not missing, f"README names options no deepfm command has: {missing}"


def test_readme_results_table_is_benchmarks_results_output():
    """``benchmarks/results.py`` writes docs/results.md; the README shows its table as is."""
    written = (ROOT / "docs" / "results.md").read_text().split("\n", 2)[2].strip()
    assert written.count("\n| ") >= 3 and written in (ROOT / "README.md").read_text()
