"""The commands README and docs/ show are commands that exist, and their links arrive: every
`mlflow run` names an entry point of MLproject, parameters that entry point declares and
experiment files that are in the repository; every `kdflow-*` command is a console script of
pyproject.toml with options it takes; every script a command runs (`python benchmarks/...`) is
there; every link to a page or a heading finds it. No training, no store: a second."""

import contextlib
import io
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from kdflow import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md"))]
# The options of `mlflow run` that take a value (MLflow 3's CLI); the rest are flags.
MLFLOW_RUN_VALUES = {"-e", "--entry-point", "-P", "--param-list", "-A", "--docker-args", "--experiment-name",
                     "--experiment-id", "-b", "--backend", "-c", "--backend-config", "--env-manager",
                     "--storage-dir", "--run-id", "--run-name", "-v", "--version"}
ENV_MANAGERS = {"local", "virtualenv", "uv", "conda"}
SEPARATORS = {"&&", "||", "|", ";"}
SCRIPT = re.compile(r"^(?:\./)?((?:benchmarks|scripts|entrypoints)/[\w./-]+\.py)$")


def shown_commands(text: str) -> list[str]:
    """The shell lines of a page: each line of its fenced code blocks (continuations joined) and
    each inline code span outside them."""
    lines, fenced, continued = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced and line.rstrip().endswith("\\"):
            continued += line.rstrip()[:-1] + " "
        elif fenced:
            lines.append(continued + line)
            continued = ""
        else:
            lines += re.findall(r"`([^`]+)`", line)
    return [line.strip() for line in lines if line.strip()]


def split_commands(line: str) -> list[list[str]]:
    """A shell line's simple commands, as token lists (comments dropped, chains split)."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:
        return []  # Not shell (prose in a code span, an unclosed quote in a fragment).
    commands, current = [], []
    for token in tokens:
        if token in SEPARATORS:
            commands.append(current)
            current = []
        elif token.endswith((";", ":")):
            commands.append([*current, token[:-1]])
            current = []
            if token.endswith(":"):
                break  # A command quoted in a benchmark's output: "mlflow run . --env-manager local: 41.5 min".
        else:
            current.append(token)
    return [command for command in commands + [current] if command]


def placeholder(value: str) -> bool:
    return any(mark in value for mark in ("<", "$", "...", "…", "{"))


def entry_points() -> dict[str, set[str]]:
    project = yaml.safe_load((ROOT / "MLproject").read_text())
    return {name: set(entry.get("parameters", {})) for name, entry in project["entry_points"].items()}


def console_scripts() -> dict[str, set[str]]:
    """Each console script with the options its --help lists."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    options = {}
    for name, target in scripts.items():
        function = getattr(cli, target.split(":")[1])
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown), pytest.raises(SystemExit):
            function(["--help"])
        options[name] = set(re.findall(r"--[\w-]+", shown.getvalue()))
    return options


def program_of(command: list[str]) -> tuple[str, list[str]]:
    """The program a command runs (its file name, after any VAR=value before it) and its arguments."""
    while command and re.match(r"^[A-Z_][A-Z0-9_]*=", command[0]):
        command = command[1:]
    return (command[0].rsplit("/", 1)[-1], command[1:]) if command else ("", [])


def problems_of(command: list[str], entries: dict, scripts: dict) -> list[str]:
    """What in one command does not exist; empty when everything does."""
    program, arguments = program_of(command)
    if program == "mlflow" and arguments[:1] == ["run"]:
        return mlflow_run_problems(arguments[1:], entries)
    if program.startswith("kdflow-") and not placeholder(program):
        if program not in scripts:
            return [f"{program} is not a console script of pyproject.toml (there are {', '.join(sorted(scripts))})"]
        return [f"{program} has no option {token.split('=')[0]}" for token in arguments
                if token.startswith("--") and token.split("=")[0] not in scripts[program]]
    return [f"{match.group(1)} does not exist" for token in command
            if (match := SCRIPT.match(token)) and not (ROOT / match.group(1)).exists()]


def mlflow_run_problems(arguments: list[str], entries: dict) -> list[str]:
    uri, entry, params, problems = None, "main", [], []
    tokens = iter(arguments)
    for token in tokens:
        option, _, attached = token.partition("=") if token.startswith("--") else (token, "", "")
        if option in MLFLOW_RUN_VALUES:
            value = attached or next(tokens, "")
            if option in ("-e", "--entry-point"):
                entry = value
            elif option in ("-P", "--param-list"):
                params.append(value)
            elif option == "--env-manager" and value not in ENV_MANAGERS and not placeholder(value):
                problems.append(f"--env-manager {value} is none of {', '.join(sorted(ENV_MANAGERS))}")
        elif not token.startswith("-") and uri is None:
            uri = token
    if uri != ".":
        return problems  # Another project, or a placeholder: not this repository's MLproject.
    if entry not in entries:
        return problems + [f"entry point {entry} is not in MLproject (there are {', '.join(sorted(entries))})"]
    for param in params:
        name, _, value = param.partition("=")
        if name not in entries[entry]:
            problems.append(f"entry point {entry} has no parameter {name}")
        elif name == "experiment" and not placeholder(value) and "://" not in value and not (ROOT / value).is_file():
            problems.append(f"experiment file {value} does not exist")
    return problems


def all_problems(pages: dict[str, str]) -> tuple[list[str], dict[str, int]]:
    entries, scripts = entry_points(), console_scripts()
    problems, counts = [], {"mlflow run": 0, "kdflow-*": 0}
    for page, text in pages.items():
        for line in shown_commands(text):
            for command in split_commands(line):
                program, arguments = program_of(command)
                counts["mlflow run"] += program == "mlflow" and arguments[:1] == ["run"]
                counts["kdflow-*"] += program.startswith("kdflow-")
                problems += [f"{page}: `{line}`: {problem}" for problem in problems_of(command, entries, scripts)]
    return problems, counts


def test_every_command_in_readme_and_docs_exists():
    problems, counts = all_problems({str(page.relative_to(ROOT)): page.read_text(encoding="utf-8") for page in PAGES})
    assert not problems, "\n".join(problems)
    # The pages do show commands: a parser that found none would pass everything.
    assert counts["mlflow run"] >= 20 and counts["kdflow-*"] >= 5, counts


def test_commands_that_do_not_exist_are_found():
    page = """
Run `mlflow run . -e distil -P temperature=5 --env-manager local`, or:

```bash
python3 -m venv .venv && mlflow run . -e sweep \\
    -P temperatures=1,2 --env-manager local   # the old name
mlflow run . -e sweep -P experiment=experiments/no-such.yaml --env-manager lcoal
MLFLOW_TRACKING_URI=sqlite:///x.db kdflow-end-orphans --experiment 3
kdflow-predicts digit.png; python benchmarks/bench_nothing.py
mlflow run . -e sweep -P experiment=experiments/<name>.yaml --env-manager local   # a placeholder is fine
```
"""
    problems, counts = all_problems({"page.md": page})
    found = "\n".join(problems)
    for expected in ("entry point distil is not in MLproject", "entry point sweep has no parameter temperatures",
                     "experiment file experiments/no-such.yaml does not exist", "--env-manager lcoal",
                     "kdflow-end-orphans has no option --experiment", "kdflow-predicts is not a console script",
                     "benchmarks/bench_nothing.py does not exist"):
        assert expected in found, found
    assert len(problems) == 7 and counts == {"mlflow run": 4, "kdflow-*": 2}, (found, counts)


def headings(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as hyphens."""
    return {re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower()).replace(" ", "-")
            for line in page.read_text(encoding="utf-8").splitlines() if line.startswith("#")}


def test_every_link_between_the_pages_arrives():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if "://" in target:
                continue
            file, _, anchor = target.partition("#")
            linked = (page.parent / file) if file else page
            if not linked.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in headings(linked):
                broken.append(f"{page.relative_to(ROOT)}: {target}: no such heading in {linked.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)


def expected_cells(name: str) -> list[dict]:
    return yaml.safe_load((ROOT / "experiments" / name).read_text(encoding="utf-8"))["expected"]["cells"]


def results_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return readme[readme.index("\n## Results\n") : readme.index("\n## Performance and scale\n")]


def test_readme_results_are_what_the_experiment_files_measured():
    """README states as current the figures its experiment files' `expected` blocks hold: each
    mean of kdtf's table, when and how long it took, and every accuracy and error count the
    findings quote, each from a file the finding names (or kdtf's own published runs)."""
    section = results_section()
    kdtf = yaml.safe_load((ROOT / "experiments" / "kdtf.yaml").read_text(encoding="utf-8"))["expected"]
    cells = {(cell["row"], float(cell["temperature"])): cell["accuracy"] for cell in kdtf["cells"]}
    table = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    header, *rows = [[field.strip() for field in row] for row in table]
    temperatures = [float(name.removeprefix("T=")) for name in header[1:] if name.startswith("T=")]
    published = {float(value) for row in rows for value in row[1 + len(temperatures):]}
    assert len(rows) == 3 and temperatures
    for row in rows:
        for temperature, value in zip(temperatures, row[1:]):
            assert float(value.split()[0]) == cells[(row[0], temperature)], (row[0], temperature)
    assert kdtf["measured"]["wall_time"].split(" (")[0] in section and str(kdtf["measured"]["date"]) in section
    findings = [item for item in section.split("\n- ")[1:]]
    assert len(findings) >= 4
    for finding in findings:
        files = re.findall(r"experiments/([\w-]+\.yaml)", finding)
        quoted = [cell["accuracy"] for name in files + ["kdtf.yaml"] for cell in expected_cells(name)]
        for percent in re.findall(r"(\d+\.\d+)%", finding):
            assert float(percent) in set(quoted) | published, (percent, finding)
        for errors in re.findall(r"\((\d+) errors\)|makes (\d+) errors|against (\d+) alone", finding):
            count = int(next(filter(None, errors)))
            assert count in {round((100 - accuracy) * 100) for accuracy in quoted}, (count, finding)
