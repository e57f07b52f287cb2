"""The commands and options the README and docs/ show are the command line's: every ``deepfm ...``
line of their shell blocks parses with ``deepfm``'s own parser, and every ``--option`` the README
names is an option of a ``deepfm`` command (read from the argparse parsers, not from a list); and the
pages speak of the product, not of its development (no issue numbers, commit hashes, branches, VM)."""

from __future__ import annotations

import json
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


HISTORY = re.compile(
    r"\bissues? #?\d+|\bVM\b|\bbranch(?:es)?\b|\bthe lead\b"
    r"|\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{7,40}\b",  # a commit hash (outside code)
    flags=re.I,
)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_hold_no_development_history(page):
    """Prose only: code blocks and spans may hold hex tokens (a Criteo value, a run id)."""
    text = re.sub(r"```.*?```", lambda m: "\n" * m.group(0).count("\n"), page.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", "``", text)
    found = [
        f"line {n}: {m.group(0)!r}"
        for n, line in enumerate(text.splitlines(), 1)
        for m in HISTORY.finditer(line)
    ]
    assert not found, f"{page.name} speaks of the development: {found}"


def test_readme_results_table_is_benchmarks_results_output():
    """``benchmarks/results.py`` writes docs/results.md; the README shows its table as is."""
    written = (ROOT / "docs" / "results.md").read_text().split("\n", 2)[2].strip()
    assert written.count("\n| ") >= 3 and written in (ROOT / "README.md").read_text()


def test_readme_five_minute_path_runs_as_written(tmp_path, monkeypatch):
    """The README's spec and commands, on a small click log with the columns it names."""
    import numpy as np
    import pandas as pd
    import yaml

    from deepfm.cli.main import main

    section = (ROOT / "README.md").read_text().split("\n## Five minutes", 1)[1].split("\n## ", 1)[0]
    spec = re.search(r"```yaml\n(.*?)```", section, flags=re.S).group(1)
    assert yaml.safe_load(spec)["input"]["files"] == ["clicks.csv"]
    rng = np.random.default_rng(0)
    n = 3000  # the default batch (1,024) fits the training split
    users, ads = rng.integers(0, 40, n), rng.integers(0, 30, n)
    price = rng.normal(50, 10, n)
    logit = (users % 2) * 1.5 - (ads % 3 == 0) * 1.5 + (price - 50) / 10
    frame = pd.DataFrame({
        "user_id": users, "ad_id": ads, "price": price.round(2),
        "tags": ["|".join(sorted({f"t{a % 4}", f"t{u % 3}"})) for u, a in zip(users, ads)],
        "clicked": (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int),
    })  # fmt: skip
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEEPFM_CACHE", str(tmp_path / "cache"))
    frame.to_csv("clicks.csv", index=False)
    frame.tail(200).to_csv("new_clicks.csv", index=False)
    (tmp_path / "clicks.yaml").write_text(spec)
    ran = []
    text = (ROOT / "README.md").read_text()
    first = text.split("\n## Five minutes", 1)[0].count("\n") + 2
    last = first + section.count("\n")
    for line, argv in commands(ROOT / "README.md"):
        if not first <= line <= last or argv[0] == "serve":
            continue  # serve blocks; commands outside the section are other examples
        if "runs/clicks" not in argv and "clicks.yaml" not in argv:
            continue  # the section's MovieLens-100K example
        extra = ["--threads", "1", "--no-progress"] if argv[0] == "train" else []
        assert main(argv + extra) == 0, argv
        ran.append(argv[0])
    assert ran == ["train", "evaluate", "predict", "export"]
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert metrics["auc"] > 0.65  # the planted signal is learnt
    assert len(pd.read_csv("scores.csv")) == 200 and (tmp_path / "feature_map.json").exists()


# README's words for a default that is not a value
DEFAULT_WORDS = {"unset": None, "automatic": 0, "download + cache": None}  # and "off": None, False or 0


def test_readme_option_defaults_are_train_config_defaults():
    """Each row of the README's table of `deepfm train` options whose default column gives one
    value per option states the TrainConfig defaults, read from the options' fields."""
    import dataclasses

    from deepfm.config import TrainConfig

    dests = {o: a.dest for a in subcommands()["train"]._actions for o in a.option_strings}
    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    text = (ROOT / "README.md").read_text()
    checked = 0
    for option_cell, default_cell in re.findall(r"^\| (`--[^|]*) \| ([^|]*) \|", text, flags=re.M):
        firsts = [o.split(" / ")[0].strip() for o in option_cell.split(", ")]  # `--a X` / `--b Y`: --a
        options = [re.match(r"`(--[a-z0-9-]+)", o).group(1) for o in firsts]
        defaults = [re.sub(r"\s*\(.*\)$", "", d).strip("` ") for d in default_cell.split(", ")]
        if len(options) != len(defaults) or not default_cell.strip():
            continue
        for option, stated in zip(options, defaults, strict=True):
            field = fields[dests[option]]
            value = field.default
            if stated == "off":
                ok = value in (None, False, 0)
            elif stated in DEFAULT_WORDS:
                ok = value == DEFAULT_WORDS[stated]
            elif isinstance(value, tuple):
                ok = ",".join(map(str, value)) == stated
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                ok = float(stated) == value
            else:
                ok = str(value) == stated
            assert ok, f"README: {option} defaults to {stated!r}; TrainConfig.{field.name} = {value!r}"
            checked += 1
    assert checked >= 20, checked
