"""The kdtf README results table, regenerated from the tracked runs of an MLflow experiment.

Runs are tagged with their kind (teacher, student, distill), recipe preset, setup (dataset, steps,
batch, learning rate) and canonical parameters (temperature, seed, hard-label weight, teacher temperature,
student network, teacher initialiser), and log their test accuracy. The finished, complete runs
(their run key written) of the running code version are grouped by setup, recipe, student network
and teacher initialiser, so that different students or teachers are never averaged together, into
one table each (a setup's teachers, the same in every recipe, appear in each of its tables): rows
Teacher / Distillation / Student only, one column per temperature, cells ``mean ± std (n)`` in
percent over seeds, and beside them the published numbers the table reproduces: kdtf's README for
softmax-regression students, Hinton et al. (2015) for the MLP student, in test errors as well.
A cell counts each seed once: the newest run of that seed, so rerunning a command never inflates
n or invents a spread. Every cell keeps the ids of its runs, listed in the CSV and JSON, so each
number can be traced.
"""

from __future__ import annotations

import csv
import json
import statistics
import textwrap
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mlflow
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kdflow.tracking import CODE_VERSION_TAG, KIND_TAG, PARAMS_TAG, RECIPE_TAG, RUN_KEY_TAG, SETUP_TAG, code_version

TEACHER, DISTILLATION, STUDENT = "Teacher", "Distillation", "Student only"
# The numbers of the kdtf README, in percent. The standalone student trains at T=1, but kdtf
# shows its single number under both temperature columns, so it appears under both here too.
KDTF_TEMPERATURES = (2.0, 5.0)
KDTF_ACCURACY = {(TEACHER, 2.0): 97.9, (TEACHER, 5.0): 98.12, (DISTILLATION, 2.0): 89.14,
                 (DISTILLATION, 5.0): 90.77, (STUDENT, 2.0): 88.84, (STUDENT, 5.0): 88.84}
# Hinton et al. (2015), section 3, MNIST test errors: the big net (two hidden layers of 1200 units,
# dropout, jittered images), the 800-800 net distilled at T = 20 from it (trained normally, at
# T = 1: kdflow's fixed-teacher row), and the 800-800 net alone.
HINTON_DISTILLATION = f"{DISTILLATION} (teacher T=1)"
HINTON_ERRORS = {TEACHER: 67, HINTON_DISTILLATION: 74, STUDENT: 146}
HINTON_TEMPERATURE = 20.0
TEST_IMAGES = 10_000  # MNIST's and Fashion-MNIST's test split: errors = (100 - accuracy %) * 100
HINTON_ACCURACY = {row: 100.0 - 100.0 * errors / TEST_IMAGES for row, errors in HINTON_ERRORS.items()}
CSV_FIELDS = ["recipe", "row", "temperature", "mean", "std", "n", "errors", "reference", "run_ids"]


@dataclass(frozen=True)
class RunRecord:
    """One tracked run, reduced to what the table needs; accuracy is a fraction in [0, 1]."""
    run_id: str
    recipe: str
    setup: str
    kind: str
    temperature: float
    seed: str
    hard_label_weight: str
    teacher_temperature: str
    teacher: str  # a teacher model URI given explicitly; empty when the run found its own
    student_model: str  # softmax or mlp (a teacher has none: its record says kdtf's)
    teacher_initializer: str  # how the run's teacher started, normal or he (a student has none: as for student_model)
    code_version: str
    start_time: int  # milliseconds; of two runs of one seed in a cell, the newer one counts
    accuracy: float


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
    """The table of one recipe: its row labels in display order, its columns and its cells."""
    recipe: str
    reference: str  # whose numbers the cells are compared with: "kdtf" or "Hinton et al."
    rows: tuple[str, ...]
    temperatures: tuple[float, ...]
    cells: tuple[Cell, ...]

    def cell(self, row: str, temperature: float) -> Cell | None:
        """The cell at this row and column, or None when no run of the row used that temperature."""
        return next((c for c in self.cells if c.row == row and c.temperature == temperature), None)


def collect_runs(experiment_id: str, include_run_id: str | None = None, client=None) -> list[RunRecord]:
    """Read the finished, complete kdflow runs of the experiment, plus the calling run if given.

    A run is complete once its run key is written, the last thing a job writes. The calling run
    is still RUNNING and not yet keyed when it regenerates the table, so it is fetched by id;
    every other run that did not complete (failed, killed, still training) is left out.
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
        if kind not in {"teacher", "student", "distill"} or "test_accuracy" not in metrics:
            continue
        if RUN_KEY_TAG not in tags and run.info.run_id != include_run_id:
            continue
        # The canonical values: `mlflow run` logs parameters as typed ("5", "''").
        params = json.loads(tags.get(PARAMS_TAG, "{}"))
        records.append(RunRecord(
            run_id=run.info.run_id, recipe=tags.get(RECIPE_TAG, ""), setup=tags.get(SETUP_TAG, ""), kind=kind,
            temperature=float(params.get("temperature", "1.0")), seed=params.get("seed", ""),
            hard_label_weight=params.get("hard_label_weight", "").strip(),
            teacher_temperature=params.get("teacher_temperature", "").strip(), teacher=params.get("teacher", ""),
            student_model=params.get("student_model", "softmax"),
            teacher_initializer=params.get("teacher_initializer", "normal"),
            code_version=tags.get(CODE_VERSION_TAG, ""), start_time=run.info.start_time,
            accuracy=float(metrics["test_accuracy"]),
        ))
    return records


def _row_of(record: RunRecord) -> tuple[tuple, str]:
    """The row a run belongs to, with a key that orders rows as kdtf does, variants after.

    A distillation from a teacher named by URI has a row of its own, named by that teacher: its
    temperature column says how it distilled, not what its teacher trained at.
    """
    if record.kind == "distill" and (record.hard_label_weight or record.teacher_temperature or record.teacher):
        variants = [f"hard_label_weight={float(record.hard_label_weight):g}"] if record.hard_label_weight else []
        if record.teacher_temperature:
            variants.append(f"teacher T={float(record.teacher_temperature):g}")
        if record.teacher:
            variants.append(f"teacher {record.teacher}")
        key = (record.teacher, float(record.hard_label_weight or -1), float(record.teacher_temperature or -1))
        return (2, *key), f"{DISTILLATION} ({', '.join(variants)})"
    return {"teacher": ((0, "", 0.0, 0.0), TEACHER), "distill": ((1, "", 0.0, 0.0), DISTILLATION),
            "student": ((3, "", 0.0, 0.0), STUDENT)}[record.kind]


def _reference_accuracy(reference: str, row: str, temperature: float) -> float | None:
    if reference == "kdtf":
        return KDTF_ACCURACY.get((row, temperature))
    published_at = {HINTON_DISTILLATION: HINTON_TEMPERATURE}.get(row, temperature)  # Only the distillation has a T.
    return HINTON_ACCURACY.get(row) if temperature == published_at else None


def _cell(row: str, temperature: float, records: list[RunRecord], reference: str) -> Cell:
    newest = {}  # One value per seed: a repeated or resumed run of a seed replaces, never adds.
    for record in sorted(records, key=lambda record: record.start_time):
        newest[record.seed] = record
    records = list(newest.values())
    percents = [100.0 * record.accuracy for record in records]
    std = statistics.stdev(percents) if len(percents) > 1 else None
    mean = statistics.mean(percents)
    return Cell(row, temperature, mean, std, len(percents), (100.0 - mean) * TEST_IMAGES / 100.0,
                _reference_accuracy(reference, row, temperature), tuple(sorted(r.run_id for r in records)))


def _table_keys(records: list[RunRecord]) -> set[tuple[str, str, str, str]]:
    """(setup, recipe, student network, teacher initialiser) of every table the runs make.

    Distillations name all four. Students have no teacher: they join every table of their setup,
    recipe and network, and make one beside kdtf's teachers when there is none. Teachers are
    shared by every recipe and student of their setup; alone, they make a kdtf table.
    """
    keys = {(r.setup, r.recipe, r.student_model, r.teacher_initializer) for r in records if r.kind == "distill"}
    keys |= {(r.setup, r.recipe, r.student_model, "normal") for r in records
             if r.kind == "student" and not any(key[:3] == (r.setup, r.recipe, r.student_model) for key in keys)}
    keys |= {(r.setup, "kdtf", "softmax", r.teacher_initializer) for r in records
             if r.kind == "teacher" and not any((key[0], key[3]) == (r.setup, r.teacher_initializer) for key in keys)}
    return keys


def _in_table(record: RunRecord, setup: str, recipe: str, student_model: str, teacher_initializer: str) -> bool:
    if record.setup != setup:
        return False
    if record.kind == "teacher":
        return record.teacher_initializer == teacher_initializer
    same_student = (record.recipe, record.student_model) == (recipe, student_model)
    return same_student and (record.kind == "student" or record.teacher_initializer == teacher_initializer)


def build_tables(records: list[RunRecord]) -> list[Table]:
    """Group the runs into tables (``_table_keys``), then by row and temperature, and aggregate each group."""
    tables = []
    for setup, recipe, student_model, teacher_initializer in sorted(_table_keys(records)):
        in_recipe = [r for r in records if _in_table(r, setup, recipe, student_model, teacher_initializer)]
        reference = "kdtf" if student_model == "softmax" else "Hinton et al."
        # A distillation whose teacher trained at its own T is also the fixed-teacher curve's point
        # at that T (its teacher_temperature was normalised to empty, so it is the kdtf run).
        fixed_teachers = {(r.hard_label_weight, float(r.teacher_temperature)) for r in in_recipe if r.teacher_temperature}
        in_recipe += [replace(r, teacher_temperature=str(r.temperature)) for r in in_recipe
                      if r.kind == "distill" and not r.teacher_temperature and not r.teacher
                      and (r.hard_label_weight, r.temperature) in fixed_teachers]
        rows = dict(sorted({_row_of(record) for record in in_recipe}))
        temperatures = sorted({r.temperature for r in in_recipe if r.kind != "student"}) or [1.0]
        cells = []
        for row in rows.values():
            in_row = [record for record in in_recipe if _row_of(record)[1] == row]
            for temperature in temperatures:
                # The student trains at T=1 whatever the column, so its one value fills them all.
                group = [r for r in in_row if row == STUDENT or r.temperature == temperature]
                if group:
                    cells.append(_cell(row, temperature, group, reference))
        variants = [f"student_model={student_model}"] if student_model != "softmax" else []
        variants += [f"teacher_initializer={teacher_initializer}"] if teacher_initializer != "normal" else []
        label = " ".join([recipe] + variants) + (f": {setup}" if setup else "")
        tables.append(Table(label, reference, tuple(rows.values()), tuple(temperatures), tuple(cells)))
    return tables


def _format(cell: Cell | None, with_errors: bool) -> str:
    if cell is None:
        return "—"
    spread = f" ± {cell.std:.2f}" if cell.std is not None else ""
    return f"{cell.mean:.2f}{spread} ({cell.n})" + (f", {cell.errors:.0f} errors" if with_errors else "")


def _reference_columns(table: Table) -> tuple[list[str], list[list[str]]]:
    """The published numbers beside a table: kdtf's per temperature, or Hinton et al.'s per row."""
    if table.reference == "kdtf":
        values = [[f"{KDTF_ACCURACY[(row, t)]:.2f}" if (row, t) in KDTF_ACCURACY else "—" for t in KDTF_TEMPERATURES]
                  for row in table.rows]
        return [f"kdtf T={t:g}" for t in KDTF_TEMPERATURES], values
    values = [[f"{HINTON_ACCURACY[row]:.2f}, {HINTON_ERRORS[row]} errors" if row in HINTON_ERRORS else "—"]
              for row in table.rows]
    return [f"Hinton et al. (distilled at T={HINTON_TEMPERATURE:g})"], values


def render_markdown(tables: list[Table], version: str = "", other_versions: int = 0) -> str:
    """Render one Markdown table per recipe, with the published numbers as the last columns."""
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
        lines += ["", f"## Recipe `{table.recipe}`", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        with_errors = table.reference != "kdtf"  # Hinton et al. count errors; kdtf gave percentages.
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
                axes.scatter(*zip(*published), marker="x", s=60, color=line[0].get_color(), label=f"{table.reference} {row}")
        # Temperatures span 1 to 20 in the curve, so a log axis spaces them evenly; ticks at each T.
        axes.set_xscale("log")
        axes.set_xticks(table.temperatures, [f"{t:g}" for t in table.temperatures], minor=False)
        axes.minorticks_off()
        axes.set(xlabel="temperature T", ylabel="test accuracy (%)")
        axes.set_title("\n".join(textwrap.wrap(f"Recipe {table.recipe}", 50)), fontsize="medium")
        axes.legend(fontsize="small")
    figure.savefig(path)


def write_results(tables: list[Table], out_dir: Path, markdown: str | None = None) -> list[Path]:
    """Write results.md (``markdown``, else the tables rendered), .csv, .json and .png afresh."""
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths = [Path(out_dir) / f"results.{suffix}" for suffix in ("md", "csv", "json", "png")]
    paths[0].write_text(render_markdown(tables) if markdown is None else markdown, encoding="utf-8")
    # One row per cell (long format), the student repeated under every column as in the table.
    rows = [{"recipe": table.recipe, **asdict(cell), "run_ids": list(cell.run_ids)}
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
