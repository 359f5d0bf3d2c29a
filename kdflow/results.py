"""The kdtf README results table, regenerated from the tracked runs of an MLflow experiment.

Everything a table shows is derived from the runs' parameters (the ``kdflow.params`` tag), never
listed by hand, so a new parameter or registered variant always gets cells of its own:

- a **table** per set of the parameters that say how the teacher and the student are built and
  trained (network, initialiser, recipe, setup): a distillation names both; a teacher joins every
  table of its teacher, a student every table of its student, and either alone makes one with the
  defaults for the other side;
- a **row** per kind, and per each distillation parameter that differs from its default (the
  loss, its weight, the teacher's own temperature, a named teacher): "Distillation
  (teacher_temperature=5, loss=weighted, hard_label_weight=0.5)";
- a **column** per temperature, and a **cell** ``mean ± std (n)`` in percent over seeds.

Only the finished, complete runs (their run key written) of the running code version count. A
cell counts each seed once, the newest run of that seed, so rerunning a command never inflates n
or invents a spread; it keeps the ids of its runs (results.csv and results.json), so every number
can be traced. Beside each table are the published numbers of its student network, if it has
any (``variants.Reference``: kdtf's README, Hinton et al.).
"""

from __future__ import annotations

import csv
import json
import statistics
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kdflow import variants
from kdflow.config import DEFAULTS, KIND_PARAMETERS, NOT_NAMED, Config, parse_value, to_text
from kdflow.tracking import CODE_VERSION_TAG, KIND_TAG, PARAMS_TAG, RUN_KEY_TAG, code_version
from kdflow.variants import DISTILLATION_ROW, STUDENT_ROW, TEACHER_ROW

TEST_IMAGES = 10_000  # MNIST's and Fashion-MNIST's test split: errors = (100 - accuracy %) * 100
CSV_FIELDS = ["table", "row", "temperature", "mean", "std", "n", "errors", "reference", "run_ids"]
# How each side of a distillation is built and trained, and what only a distillation has.
TEACHER_SIDE = tuple(name for name in KIND_PARAMETERS["teacher"] if name not in NOT_NAMED)
STUDENT_SIDE = tuple(name for name in KIND_PARAMETERS["student"] if name not in NOT_NAMED)
TABLE_PARAMETERS = tuple(dict.fromkeys(STUDENT_SIDE + TEACHER_SIDE))
ROW_PARAMETERS = tuple(name for name in KIND_PARAMETERS["distill"] if name not in TABLE_PARAMETERS + NOT_NAMED)
ROW_ORDER = {TEACHER_ROW: 0, DISTILLATION_ROW: 1, STUDENT_ROW: 3}  # variants of the distillation: 2


@dataclass(frozen=True)
class RunRecord:
    """One tracked run, reduced to what the table needs; accuracy is a fraction in [0, 1]."""
    run_id: str
    kind: str
    config: Config  # the run's parameters over the defaults (a student's teacher fields are the defaults)
    code_version: str
    start_time: int  # milliseconds; of two runs of one seed in a cell, the newer one counts
    accuracy: float

    def side(self, names) -> tuple:
        return tuple((name, to_text(getattr(self.config, name))) for name in names)


@dataclass(frozen=True)
class Cell:
    """One table cell: test accuracy in percent over seeds, with the run ids behind it."""
    row: str
    temperature: float
    mean: float
    std: float | None  # The sample std (ddof=1) is undefined for one run, so it is None then.
    n: int
    errors: float  # mean test errors out of TEST_IMAGES
    reference: float | None  # the published accuracy (%) the table compares this cell with
    run_ids: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """One table: what its runs share, its row labels in display order, its columns and its cells."""
    label: str  # the shared parameters that differ from the defaults, e.g. "recipe=tuned, student_model=mlp"
    identity: dict  # every shared parameter (TABLE_PARAMETERS) as canonical text
    reference: variants.Reference | None
    rows: tuple[str, ...]
    temperatures: tuple[float, ...]
    cells: tuple[Cell, ...]

    def cell(self, row: str, temperature: float) -> Cell | None:
        """The cell at this row and column, or None when no run of the row used that temperature."""
        return next((c for c in self.cells if c.row == row and c.temperature == temperature), None)


def _config(kind: str, params: dict) -> Config:
    """A run's Config from its logged parameters; those a run does not take keep their defaults."""
    return Config(**{name: parse_value(name, params[name], getattr(DEFAULTS, name))
                     for name in KIND_PARAMETERS[kind] if name in params})


def collect_runs(experiment_id: str, include_run_id: str | None = None, client=None) -> list[RunRecord]:
    """Read the finished, complete kdflow runs of the experiment, plus the calling run if given.

    A run is complete once its run key is written, the last thing a job writes. The calling run
    is still RUNNING and not yet keyed when it regenerates the table, so it is fetched by id;
    every other run that did not complete (failed, killed, still training) is left out, and so is
    one whose parameters this code no longer takes (a run of another code version, not counted).
    """
    client = client or mlflow.MlflowClient()
    runs, page = [], None
    while page is None or page.token:  # search_runs answers in pages of at most 1000 runs.
        token = page.token if page else None
        page = client.search_runs([experiment_id], "attributes.status = 'FINISHED'", page_token=token)
        runs.extend(page)
    if include_run_id and all(run.info.run_id != include_run_id for run in runs):
        runs.append(client.get_run(include_run_id))
    records = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        kind = tags.get(KIND_TAG)
        # Runs of other kinds (the report run) or without a logged accuracy have no cell.
        if kind not in KIND_PARAMETERS or "test_accuracy" not in metrics:
            continue
        if RUN_KEY_TAG not in tags and run.info.run_id != include_run_id:
            continue
        try:
            # The canonical values: `mlflow run` logs parameters as typed ("5", "''").
            config = _config(kind, json.loads(tags.get(PARAMS_TAG, "{}")))
        except ValueError:
            config = None
        records.append(RunRecord(run.info.run_id, kind, config, tags.get(CODE_VERSION_TAG, ""), run.info.start_time,
                                 float(metrics["test_accuracy"])))
    return records


def row_label(record: RunRecord, fixed_teacher: bool = False) -> str:
    """Teacher, Student only, or Distillation with every distillation parameter that is not the
    default; ``fixed_teacher`` writes out the teacher's temperature when it is the distillation's."""
    if record.kind != "distill":
        return {"teacher": TEACHER_ROW, "student": STUDENT_ROW}[record.kind]
    differences = record.config.differences(ROW_PARAMETERS)
    if fixed_teacher:
        differences["teacher_temperature"] = f"{record.config.temperature:g}"
        differences = {name: differences[name] for name in ROW_PARAMETERS if name in differences}
    return DISTILLATION_ROW + (f" ({', '.join(f'{n}={v}' for n, v in differences.items())})" if differences else "")


def _row_order(label: str) -> tuple:
    return ROW_ORDER.get(label, 2), label


def _table_identities(records: list[RunRecord]) -> list[tuple]:
    """The tables the runs make, each as its TABLE_PARAMETERS: every distillation's; a student's or
    a teacher's (with the defaults for the other side) where no distillation shares its side."""
    tables = {record.side(TABLE_PARAMETERS) for record in records if record.kind == "distill"}
    for kind, side in (("student", STUDENT_SIDE), ("teacher", TEACHER_SIDE)):
        for record in records:
            shared = record.side(side)
            if record.kind == kind and not any(set(shared) <= set(table) for table in tables):
                tables.add(record.side(TABLE_PARAMETERS))
    return sorted(tables)


def _in_table(record: RunRecord, table: tuple) -> bool:
    side = {"teacher": TEACHER_SIDE, "student": STUDENT_SIDE, "distill": TABLE_PARAMETERS}[record.kind]
    return set(record.side(side)) <= set(table)


def _cell(row: str, temperature: float, records: list[RunRecord], reference: variants.Reference | None) -> Cell:
    newest = {}  # One value per seed: a repeated or resumed run of a seed replaces, never adds.
    for record in sorted(records, key=lambda record: record.start_time):
        newest[record.config.seed] = record
    records = list(newest.values())
    percents = [100.0 * record.accuracy for record in records]
    std = statistics.stdev(percents) if len(percents) > 1 else None
    mean = statistics.mean(percents)
    published = reference.accuracy.get((row, temperature)) if reference else None
    return Cell(row, temperature, mean, std, len(percents), (100.0 - mean) * TEST_IMAGES / 100.0, published,
                tuple(sorted(r.run_id for r in records)))


def build_tables(records: list[RunRecord]) -> list[Table]:
    """Group the runs into tables, then by row and temperature, and aggregate each group."""
    records = [record for record in records if record.config is not None]
    tables = []
    for identity in _table_identities(records):
        in_table = [(row_label(r), r) for r in records if _in_table(r, identity)]
        rows = sorted({row for row, _ in in_table}, key=_row_order)
        # A distillation whose teacher trained at its own T is also the point at that T of a row
        # whose teacher trained at one fixed T (teacher_temperature), when the table has that row.
        for row, record in list(in_table):
            if record.kind == "distill" and record.config.teacher_temperature is None and not record.config.teacher:
                if row_label(record, fixed_teacher=True) in rows:
                    in_table.append((row_label(record, fixed_teacher=True), record))
        temperatures = sorted({r.config.temperature for _, r in in_table if r.kind != "student"}) or [1.0]
        config = Config(**{name: parse_value(name, text, getattr(DEFAULTS, name)) for name, text in identity})
        reference = variants.NETWORKS[config.student_model].reference
        cells = []
        for row in rows:
            for temperature in temperatures:
                # The student trains at T=1 whatever the column, so its one value fills them all.
                group = [r for label, r in in_table if label == row and (row == STUDENT_ROW or r.config.temperature == temperature)]
                if group:
                    cells.append(_cell(row, temperature, group, reference))
        label = ", ".join(f"{name}={value}" for name, value in config.differences(TABLE_PARAMETERS).items()) or "kdtf"
        tables.append(Table(label, dict(identity), reference, tuple(rows), tuple(temperatures), tuple(cells)))
    return tables



def _format(cell: Cell | None, with_errors: bool) -> str:
    if cell is None:
        return "—"
    spread = f" ± {cell.std:.2f}" if cell.std is not None else ""
    return f"{cell.mean:.2f}{spread} ({cell.n})" + (f", {cell.errors:.0f} errors" if with_errors else "")


def _reference_columns(table: Table) -> tuple[list[str], list[list[str]]]:
    """The published numbers beside a table, a column per temperature they were given at."""
    reference = table.reference
    if reference is None:
        return [], [[] for _ in table.rows]
    temperatures = sorted({temperature for _, temperature in reference.accuracy})

    def published(row, temperature):
        accuracy = reference.accuracy.get((row, temperature))
        if accuracy is None:
            return "—"
        errors = f", {round((100.0 - accuracy) * TEST_IMAGES / 100.0)} errors" if reference.errors else ""
        return f"{accuracy:.2f}{errors}"

    values = [[published(row, temperature) for temperature in temperatures] for row in table.rows]
    return [f"{reference.source} T={t:g}" for t in temperatures], values


def render_markdown(tables: list[Table], version: str = "", other_versions: int = 0) -> str:
    """Render one Markdown table per table, with the published numbers as the last columns."""
    lines = ["# Results: test accuracy (%) on MNIST", "",
             "Each cell is mean ± sample std (number of seeds) over finished runs, one run per seed,",
             "no std for one seed; kdtf columns: the original kdtf README; Hinton et al. columns: their",
             "MNIST test errors (2015, section 3). Run ids per cell: results.csv, results.json."]
    if version:
        lines.append(f"Code version `{version}`; finished runs of other code versions, not counted: {other_versions}.")
    if not tables:
        return "\n".join(lines + ["", "No finished runs yet: there is nothing to tabulate.", ""])
    for table in tables:
        reference_header, reference_values = _reference_columns(table)
        header = ["Model"] + [f"T={t:g}" for t in table.temperatures] + reference_header
        lines += ["", f"## `{table.label}`", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        with_errors = bool(table.reference and table.reference.errors)  # Hinton et al. count errors; kdtf gave percentages.
        for row, published in zip(table.rows, reference_values):
            ours = [_format(table.cell(row, t), with_errors) for t in table.temperatures]
            lines.append("| " + " | ".join([row] + ours + published) + " |")
    return "\n".join(lines) + "\n"


def _plot(tables: list[Table], path: Path) -> None:
    """Plot accuracy against temperature per row, one panel per table, the published numbers as crosses."""
    figure = Figure(figsize=(6 * max(len(tables), 1), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    if not tables:
        figure.text(0.5, 0.5, "No finished runs yet", ha="center", va="center")
    for index, table in enumerate(tables):
        axes = figure.add_subplot(1, len(tables), index + 1)
        for row in table.rows:
            cells = [c for c in table.cells if c.row == row]
            line = axes.errorbar([c.temperature for c in cells], [c.mean for c in cells],
                                 yerr=[c.std or 0.0 for c in cells], marker="o", capsize=3, label=row)
            published = [(c.temperature, c.reference) for c in cells if c.reference is not None]
            if published:
                axes.scatter(*zip(*published), marker="x", s=60, color=line[0].get_color(), label=f"{table.reference.source} {row}")
        # Temperatures span 1 to 20 in the curve, so a log axis spaces them evenly; ticks at each T.
        axes.set_xscale("log")
        axes.set_xticks(table.temperatures, [f"{t:g}" for t in table.temperatures], minor=False)
        axes.minorticks_off()
        axes.set(xlabel="temperature T", ylabel="test accuracy (%)")
        axes.set_title("\n".join(textwrap.wrap(table.label, 50)), fontsize="medium")
        axes.legend(fontsize="small")
    figure.savefig(path)


def write_results(tables: list[Table], out_dir: Path, markdown: str | None = None) -> list[Path]:
    """Write results.md (``markdown``, else the tables rendered), .csv, .json and .png afresh."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = [Path(out_dir) / f"results.{suffix}" for suffix in ("md", "csv", "json", "png")]
    paths[0].write_text(render_markdown(tables) if markdown is None else markdown, encoding="utf-8")
    # One row per cell (long format), the student repeated under every column as in the table.
    rows = [{"table": table.label, **asdict(cell), "run_ids": list(cell.run_ids)}
            for table in tables for cell in table.cells]
    with paths[1].open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows({**row, "run_ids": ";".join(row["run_ids"])} for row in rows)
    paths[2].write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _plot(tables, paths[3])
    return paths


def regenerate(experiment_id: str, out_dir: Path, include_run_id: str | None = None) -> tuple[str, list[Table]]:
    """Collect the runs of this code version, build the tables, write the four files; return the
    Markdown and the tables."""
    version = code_version()
    records = collect_runs(experiment_id, include_run_id)
    tables = build_tables([record for record in records if record.code_version == version])
    markdown = render_markdown(tables, version, sum(record.code_version != version for record in records))
    write_results(tables, out_dir, markdown)
    return markdown, tables
