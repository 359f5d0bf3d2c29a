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

The report tabulates the whole experiment. A training run, and a sweep at its end, tabulate only
the rows they are in, beside the teacher and the student-alone rows of their tables: those runs are
found by narrow searches on the server (``neighbours``), so what a run reads does not grow with
the experiment, and each cell is the one the whole experiment's table has.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
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
# Narrow searches of a table's rows sent at once: each waits mostly on the tracking server.
SEARCHERS = 4
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


def _record(run) -> RunRecord | None:
    """The run reduced to what the table needs, or None for a run that has no cell: another kind
    of run (the report, a sweep) or one without a logged accuracy. A run whose parameters this
    code no longer takes (a run of another code version) keeps ``config`` None: counted, not pooled."""
    tags, metrics = run.data.tags, run.data.metrics
    kind = tags.get(KIND_TAG)
    if kind not in KIND_PARAMETERS or "test_accuracy" not in metrics:
        return None
    try:
        # The canonical values: `mlflow run` logs parameters as typed ("5", "''").
        config = _config(kind, json.loads(tags.get(PARAMS_TAG, "{}")))
    except ValueError:
        config = None
    return RunRecord(run.info.run_id, kind, config, tags.get(CODE_VERSION_TAG, ""), run.info.start_time,
                     float(metrics["test_accuracy"]))


def _search(client, experiment_id: str, filter_string: str) -> list:
    runs, page = [], None
    while page is None or page.token:  # search_runs answers in pages of at most 1000 runs.
        page = client.search_runs([experiment_id], filter_string, page_token=page.token if page else None)
        runs.extend(page)
    return runs


def collect_runs(experiment_id: str, client=None) -> list[RunRecord]:
    """Read every finished, complete kdflow run of the experiment: the report's table.

    A run is complete once its run key is written, the last thing a job writes; every run that
    did not complete (failed, killed, still training) is left out. A training run's own table
    reads ``neighbours`` instead, and a sweep's check ``records_of`` its trials' runs.
    """
    client = client or mlflow.MlflowClient()
    runs = _search(client, experiment_id, "attributes.status = 'FINISHED'")
    records = [(run, _record(run)) for run in runs]
    return [record for run, record in records if record and RUN_KEY_TAG in run.data.tags]


def in_filters(field: str, run_ids) -> list[str]:
    """Search filters ``field IN (...)`` that together name these run ids, a few hundred each: a
    search or a few rather than a request per run, each well inside a request's size."""
    run_ids = sorted(set(run_ids))
    return [f"{field} IN ({', '.join(repr(run_id) for run_id in run_ids[start:start + 500])})"
            for start in range(0, len(run_ids), 500)]


def search_ids(client, experiment_id: str, run_ids) -> list:
    """The experiment's runs with these ids."""
    return [run for filter_string in in_filters("attributes.run_id", run_ids) for run in _search(client, experiment_id, filter_string)]


def records_of(runs) -> list[RunRecord]:
    """These MLflow runs as table records, leaving out those without a cell. Counted whether
    finished and keyed or not: they are the callers' own, and a training run tabulates itself
    before it ends and writes its key."""
    return [record for record in map(_record, runs) if record]


def _neighbour_queries(record: RunRecord) -> set[tuple[str, tuple]]:
    """What a run's own tables need besides itself, as (kind, parameters) that the runs must have:
    the teachers and the students alone of its table and, for a distillation, its row (the same
    table and distillation parameters, any temperature and seed) and, where its teacher trained at
    one fixed T, kdtf's way distillations at that T (build_tables counts them in its row too)."""
    queries = {("teacher", record.side(TEACHER_SIDE)), ("student", record.side(STUDENT_SIDE))}
    if record.kind != "distill":
        return queries
    own_row = record.side(TABLE_PARAMETERS + ROW_PARAMETERS)
    queries.add(("distill", own_row))
    config = record.config
    if config.teacher_temperature is not None and not config.teacher:
        kdtf_way = dict(own_row) | {"teacher_temperature": "", "temperature": to_text(config.teacher_temperature)}
        queries.add(("distill", tuple(kdtf_way.items())))
    return queries


def _filter_string(kind: str, parameters: tuple, version: str) -> str:
    """The server-side search for the finished, complete runs of ``kind`` and this code version,
    with an accuracy, whose parameters tag holds these values.

    The tag is JSON with sorted keys, so the values come in name order: one ``LIKE`` with ``%``
    between them (``"loss": "kdtf"%"num_steps": "40"``) is one scan of the tags, where a clause per
    value was a join each. ``LIKE`` can only widen the search (``_`` matches any character), and a
    value it cannot quote is left to the exact check that follows.
    """
    pairs = [json.dumps({name: value})[1:-1] for name, value in sorted(parameters)]  # As in the tag: "name": "value"
    pattern = "%".join(pair for pair in pairs if not any(character in pair for character in "'\\%"))
    return " and ".join(["attributes.status = 'FINISHED'", "metrics.test_accuracy >= 0", f"tags.`{KIND_TAG}` = '{kind}'",
                         f"tags.`{CODE_VERSION_TAG}` = '{version}'", f"tags.`{RUN_KEY_TAG}` IS NOT NULL",
                         f"tags.`{PARAMS_TAG}` LIKE '%{pattern}%'"])


def neighbours(experiment_id: str, anchors: list[RunRecord], client=None) -> list[RunRecord]:
    """The anchors and the runs of this code version their own tables need (``_neighbour_queries``),
    each found by a narrow search on the server: a few searches per distinct row, however many
    other runs the experiment holds. The searches are sent several at once: a sweep's trials span
    many rows, and each search waits mostly on the server."""
    client = client or mlflow.MlflowClient()
    version = code_version()
    found = {anchor.run_id: anchor for anchor in anchors}
    queries = sorted(set().union(*(_neighbour_queries(anchor) for anchor in anchors if anchor.config is not None)))
    with concurrent.futures.ThreadPoolExecutor(SEARCHERS) as pool:
        answers = list(pool.map(lambda query: _search(client, experiment_id, _filter_string(*query, version)), queries))
    for (kind, parameters), answer in zip(queries, answers):
        for run in answer:
            record = _record(run)
            # The exact check: the search may have let through more than the parameters name.
            if record and record.config is not None and record.kind == kind and set(parameters) <= set(
                    record.side(KIND_PARAMETERS[kind])):
                found.setdefault(record.run_id, record)
    return list(found.values())


def tables_of(anchors: list[RunRecord], records: list[RunRecord]) -> list[Table]:
    """The tables the anchors are in, built from ``records`` (``neighbours``), with the anchors'
    own rows and the teacher and student-alone rows. Their cells are those of the whole
    experiment's tables; other rows, and tables no anchor is in, are left out rather than shown
    with some of their runs."""
    wanted = {(anchor.side(TABLE_PARAMETERS), row_label(anchor)) for anchor in anchors if anchor.config is not None}
    tables = []
    for table in build_tables(records):
        identity = tuple(table.identity.items())
        if not any((identity, row) in wanted for row in table.rows):
            continue
        rows = tuple(row for row in table.rows if row in (TEACHER_ROW, STUDENT_ROW) or (identity, row) in wanted)
        cells = [cell for cell in table.cells if cell.row in rows]
        temperatures = sorted({cell.temperature for cell in cells if cell.row != STUDENT_ROW}) or [1.0]
        cells = [cell for cell in cells if cell.temperature in temperatures]
        tables.append(dataclasses.replace(table, rows=rows, temperatures=tuple(temperatures), cells=tuple(cells)))
    return tables


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
    # The errors' spread over seeds is the accuracy's, counted in test images.
    errors_spread = f" ± {cell.std * TEST_IMAGES / 100.0:.0f}" if cell.std is not None else ""
    return f"{cell.mean:.2f}{spread} ({cell.n})" + (f", {cell.errors:.0f}{errors_spread} errors" if with_errors else "")


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


def render_markdown(tables: list[Table], version: str = "", other_versions: int | None = None) -> str:
    """Render one Markdown table per table, with the published numbers as the last columns, under
    the code version and (where the whole experiment was read) how many runs of others it holds."""
    lines = ["# Results: test accuracy (%) on MNIST", "",
             "Each cell is mean ± sample std (number of seeds) over finished runs, one run per seed,",
             "no std for one seed; kdtf columns: the original kdtf README; Hinton et al. columns: their",
             "MNIST test errors (2015, section 3). Run ids per cell: results.csv, results.json."]
    if version:
        others = f"; finished runs of other code versions, not counted: {other_versions}" if other_versions is not None else ""
        lines.append(f"Code version `{version}`{others}.")
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


def regenerate(experiment_id: str, out_dir: Path, anchor_runs: list | None = None,
               client=None) -> tuple[str, list[Table]]:
    """Build the tables of this code version and write the four files; return the Markdown and the
    tables. By default every table of the experiment (the report's); with ``anchor_runs`` (MLflow
    runs, as read by the caller, which a sweep also needs), the tables those runs are in (a run's
    own, a sweep's trials'), read without the rest of the experiment, so that their cost does not
    grow with it."""
    version = code_version()
    if anchor_runs is None:
        records = collect_runs(experiment_id, client)
        tables = build_tables([record for record in records if record.code_version == version])
        markdown = render_markdown(tables, version, sum(record.code_version != version for record in records))
    else:
        anchors = [record for record in records_of(anchor_runs) if record.code_version == version]
        tables = tables_of(anchors, neighbours(experiment_id, anchors, client))
        markdown = render_markdown(tables, version)
    write_results(tables, out_dir, markdown)
    return markdown, tables
