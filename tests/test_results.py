"""Tests for kdflow.results against a real MLflow store: a SQLite file in a temporary directory.

The runs are logged with the real MLflow API but without training, with known accuracies, so
that every mean, std and count in the regenerated table can be asserted exactly.
"""

import csv
import json

import mlflow
import pytest

from kdflow import results, tracking
from kdflow.config import DEFAULTS, KIND_PARAMETERS, Config, parse_value

# Accuracies (fractions) per cell of the "kdtf" recipe; the table shows them in percent.
TEACHER_T2 = [0.978, 0.980, 0.982]  # 98.00 ± 0.20 (3)
DISTILL_T2 = [0.89, 0.90]  # 89.50 ± 0.71 (2)
DISTILL_T5 = [0.90, 0.91]  # with the calling run's 0.92: 91.00 ± 1.00 (3)
WEIGHTED_T5 = [0.93, 0.95]  # 94.00 ± 1.41 (2)
STUDENT = [0.88, 0.89, 0.90]  # 89.00 ± 1.00 (3), under every column
FIXED_TEACHER_T5 = [0.92]  # distilled at T=5 from a teacher trained at T=1: a row of its own
NAMED_TEACHER_T5 = [0.87]  # distilled at T=5 from a teacher named by its URI: a row of its own too
DISTILL_T1 = [0.88]  # kdtf's way at T=1: its teacher trained at T=1, so it is in both rows
MNIST, FASHION = "mnist", "fashion_mnist"
# Each table is labelled by the parameters its runs share that are not the defaults.
KDTF, TUNED, KDTF_FASHION = "kdtf", "recipe=tuned", "dataset=fashion_mnist"
HINTON = "recipe=tuned, student_model=mlp, teacher_initializer=he"
FIXED, WEIGHTED = "Distillation (teacher_temperature=1)", "Distillation (loss=weighted, hard_label_weight=0.5)"
NAMED = "Distillation (teacher=models:/kd-teacher/3)"

EXPECTED_KDTF_TABLE = """\
| Model | T=1 | T=2 | T=5 | kdtf T=2 | kdtf T=5 |
|---|---|---|---|---|---|
| Teacher | — | 98.00 ± 0.20 (3) | 98.12 (1) | 97.90 | 98.12 |
| Distillation | 88.00 (1) | 89.50 ± 0.71 (2) | 91.00 ± 1.00 (3) | 89.14 | 90.77 |
| Distillation (loss=weighted, hard_label_weight=0.5) | — | — | 94.00 ± 1.41 (2) | — | — |
| Distillation (teacher=models:/kd-teacher/3) | — | — | 87.00 (1) | — | — |
| Distillation (teacher_temperature=1) | 88.00 (1) | — | 92.00 (1) | — | — |
| Student only | 89.00 ± 1.00 (3) | 89.00 ± 1.00 (3) | 89.00 ± 1.00 (3) | 88.84 | 88.84 |
"""


def log_run(experiment_id, kind, recipe, temperature, seed, accuracy=None, hard_label_weight=None, status="FINISHED",
            setup=MNIST, teacher_temperature=None, teacher=None, version=None, complete=True, networks=None):
    """Log one run as the training jobs do, ending it with the given status; returns its id.

    ``version`` is its code version (the running code's by default); ``complete=False`` leaves
    out the run key, as a run that failed before its end and was still marked FINISHED would.
    ``networks`` holds the student_model and teacher_initializer parameters where not kdtf's.
    """
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.set_tags({"kdflow.kind": kind, "kdflow.code_version": version or tracking.code_version()})
        networks = {"recipe": recipe, "dataset": setup} | (networks or {})
        params = canonical_params(kind, temperature, seed, hard_label_weight, teacher_temperature, teacher, networks)
        mlflow.set_tag("kdflow.params", params)
        # `mlflow run` logs parameters as the user typed them; the table must not read these.
        mlflow.log_params({"temperature": f"{temperature:g}", "seed": str(seed), "hard_label_weight": "''"})
        if accuracy is not None:
            mlflow.log_metric("test_accuracy", accuracy)
        if complete:
            mlflow.set_tag("kdflow.run_key", f"{kind}-{temperature}-{seed}")
        if status != "FINISHED":
            mlflow.end_run(status=status)
    return run.info.run_id


def canonical_params(kind, temperature, seed, hard_label_weight, teacher_temperature=None, teacher=None, networks=None):
    """The ``kdflow.params`` tag as a job writes it: every parameter of its kind, canonical."""
    text = {"temperature": str(temperature), "seed": str(seed)} | (networks or {})
    if hard_label_weight is not None:
        text |= {"hard_label_weight": hard_label_weight, "loss": "weighted" if hard_label_weight else "kdtf"}
    if teacher_temperature is not None:
        text["teacher_temperature"] = teacher_temperature
    if teacher is not None:
        text["teacher"] = teacher
    config = Config(**{name: parse_value(name, value, getattr(DEFAULTS, name)) for name, value in text.items()})
    return json.dumps(config.params(kind if kind in KIND_PARAMETERS else "distill"), sort_keys=True)  # The report: any


def running_run(client, experiment_id, kind, recipe, temperature, accuracy, hard_label_weight=""):
    """Create a run that stays RUNNING, as a training job that has not finished yet."""
    tags = {"kdflow.kind": kind, "kdflow.params": canonical_params(kind, temperature, 99, hard_label_weight, networks={"recipe": recipe}),
            "kdflow.code_version": tracking.code_version()}
    run_id = client.create_run(experiment_id, tags=tags).info.run_id
    client.log_metric(run_id, "test_accuracy", accuracy)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One populated store for the whole module, since creating a SQLite store takes seconds."""
    directory = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{directory}/mlflow.db")
        client = mlflow.MlflowClient()
        experiment = client.create_experiment("kd")
        ids = {}  # The run ids of each cell, to check that every cell names exactly its runs.

        def log(cell, *args, **kwargs):
            ids.setdefault(cell, []).append(log_run(experiment, *args, **kwargs))

        for seed, accuracy in enumerate(TEACHER_T2):
            log("teacher T=2", "teacher", "kdtf", 2, seed, accuracy)
        log("teacher T=5", "teacher", "kdtf", 5, 0, 0.9812)
        # An older run of a seed that is run again below: the newer run replaces it in its cell.
        log("replaced", "distill", "kdtf", 2, 0, 0.10, hard_label_weight="")
        for seed, accuracy in enumerate(DISTILL_T2):
            log("distill T=2", "distill", "kdtf", 2, seed, accuracy, hard_label_weight="")
        for seed, accuracy in enumerate(DISTILL_T5):
            log("distill T=5", "distill", "kdtf", 5, seed, accuracy, hard_label_weight="")
        for seed, accuracy in enumerate(DISTILL_T1):
            log("distill T=1", "distill", "kdtf", 1, seed, accuracy, hard_label_weight="")
        for seed, accuracy in enumerate(WEIGHTED_T5):
            log("hard_label_weight T=5", "distill", "kdtf", 5, seed, accuracy, hard_label_weight="0.5")
        for seed, accuracy in enumerate(STUDENT):
            log("student", "student", "kdtf", 1, seed, accuracy)
        log("fixed teacher T=5", "distill", "kdtf", 5, 0, FIXED_TEACHER_T5[0], hard_label_weight="", teacher_temperature="1.0")
        log("named teacher T=5", "distill", "kdtf", 5, 0, NAMED_TEACHER_T5[0], hard_label_weight="",
            teacher="models:/kd-teacher/3")
        # Runs that must not count: they would visibly move the means above if they did.
        log("ignored", "teacher", "kdtf", 2, 7, 0.10, status="FAILED")
        log("ignored", "teacher", "kdtf", 2, 8, None)  # Finished without a test accuracy.
        log("ignored", "report", "kdtf", 2, 9, 0.10)  # Not a training run.
        log("ignored", "distill", "kdtf", 5, 5, 0.10, hard_label_weight="", complete=False)  # No run key.
        # Another code version: read, but never pooled with this version's runs.
        log("other version", "distill", "kdtf", 5, 6, 0.10, hard_label_weight="", version="0123456789abcdef")
        ids["ignored"].append(running_run(client, experiment, "distill", "kdtf", 5, 0.10))
        ids["calling"] = [running_run(client, experiment, "distill", "kdtf", 5, 0.92)]
        # A second setup at other temperatures, and a second recipe of the first setup, whose
        # table shares that setup's teachers (recipes differ in the student only).
        log("fashion teacher", "teacher", "kdtf", 10, 0, 0.91, setup=FASHION)
        for seed, accuracy in enumerate([0.80, 0.82]):
            log("fashion student", "student", "kdtf", 1, seed, accuracy, setup=FASHION)
        log("tuned student", "student", "tuned", 1, 0, 0.85)
        # Hinton et al.'s experiment in the first setup: a He-initialised teacher at T=1, MLP
        # students alone and distilled from it. None of it may leak into the tables above.
        he_teacher, mlp = {"teacher_initializer": "he"}, {"student_model": "mlp"}
        log("he teacher", "teacher", "kdtf", 1, 0, 0.9915, networks=he_teacher)
        for seed, accuracy in enumerate([0.9815, 0.9825]):
            log("mlp student", "student", "tuned", 1, seed, accuracy, networks=mlp)
        for seed, accuracy in enumerate([0.9860, 0.9870]):
            log("mlp distill T=20", "distill", "tuned", 20, seed, accuracy, hard_label_weight="", teacher_temperature="1.0",
                networks=mlp | he_teacher)
        log("mlp distill T=1", "distill", "tuned", 1, 0, 0.9830, hard_label_weight="", networks=mlp | he_teacher)
        yield client, experiment, ids


def records_by_id(experiment, run_ids):
    """The table records of the experiment's runs with these ids, as a sweep reads its trials'."""
    return results.records_of(results.search_ids(mlflow.MlflowClient(), experiment, run_ids))


def whole_experiment_with(experiment, run_id):
    """The records of the whole experiment's tables with one more run, still running, in them."""
    records = {record.run_id: record for record in results.collect_runs(experiment) + records_by_id(experiment, [run_id])}
    return [record for record in records.values() if record.code_version == tracking.code_version()]


@pytest.fixture(scope="module")
def tables(store):
    """The whole experiment's tables, with the calling run, still running, in them."""
    _, experiment, ids = store
    return {table.label: table for table in results.build_tables(whole_experiment_with(experiment, ids["calling"][0]))}


def test_collect_counts_finished_complete_runs_and_by_id_the_calling_run(store):
    client, experiment, ids = store
    counted = {run_id for cell, run_ids in ids.items() if cell != "ignored" for run_id in run_ids}
    assert {record.run_id for record in results.collect_runs(experiment)} == counted - set(ids["calling"])
    # A run tabulating itself is found by its id, running and unkeyed as it is.
    (calling,) = records_by_id(experiment, ids["calling"])
    assert (calling.run_id, calling.accuracy) == (ids["calling"][0], 0.92)


def test_cells_hold_exact_statistics_and_their_run_ids(store, tables):
    _, _, ids = store
    table = tables[KDTF]
    assert table.rows == ("Teacher", "Distillation", WEIGHTED, NAMED, FIXED, "Student only")
    assert table.temperatures == (1.0, 2.0, 5.0)
    expected = {  # (row, temperature): (mean, std, run ids)
        ("Teacher", 2.0): (98.0, 0.2, ids["teacher T=2"]),
        ("Teacher", 5.0): (98.12, None, ids["teacher T=5"]),
        ("Distillation", 2.0): (89.5, 0.5 ** 0.5, ids["distill T=2"]),
        ("Distillation", 5.0): (91.0, 1.0, ids["distill T=5"] + ids["calling"]),
        (WEIGHTED, 5.0): (94.0, 2 ** 0.5, ids["hard_label_weight T=5"]),
        (FIXED, 5.0): (92.0, None, ids["fixed teacher T=5"]),
        (NAMED, 5.0): (87.0, None, ids["named teacher T=5"]),
        ("Distillation", 1.0): (88.0, None, ids["distill T=1"]),
        # The same run: with the teacher at its own T it is the fixed-teacher curve's point at T=1.
        (FIXED, 1.0): (88.0, None, ids["distill T=1"]),
        ("Student only", 1.0): (89.0, 1.0, ids["student"]),
        ("Student only", 2.0): (89.0, 1.0, ids["student"]),
        ("Student only", 5.0): (89.0, 1.0, ids["student"]),
    }
    assert {(cell.row, cell.temperature) for cell in table.cells} == set(expected)
    for (row, temperature), (mean, std, run_ids) in expected.items():
        cell = table.cell(row, temperature)
        assert cell.mean == pytest.approx(mean)
        assert cell.std == (None if std is None else pytest.approx(std))
        assert cell.n == len(run_ids)
        assert set(cell.run_ids) == set(run_ids)
    assert table.cell("Distillation", 5.0).reference == 90.77
    assert table.cell(WEIGHTED, 5.0).reference is None
    assert table.cell("Distillation", 5.0).errors == pytest.approx(10_000 - 100 * expected[("Distillation", 5.0)][0])


def test_setups_and_recipes_are_kept_apart_but_share_teachers(store, tables):
    _, _, ids = store
    assert set(tables) == {KDTF, KDTF_FASHION, TUNED, HINTON}
    fashion = tables[KDTF_FASHION]
    assert fashion.temperatures == (10.0,)
    assert fashion.cell("Teacher", 10.0).run_ids == tuple(ids["fashion teacher"])
    assert fashion.cell("Student only", 10.0).mean == pytest.approx(81.0)
    assert fashion.cell("Teacher", 10.0).reference is None
    tuned = tables[TUNED]
    assert tuned.rows == ("Teacher", "Student only") and tuned.temperatures == (2.0, 5.0)
    assert tuned.cell("Teacher", 2.0) == tables[KDTF].cell("Teacher", 2.0)
    assert tuned.cell("Student only", 5.0).run_ids == tuple(ids["tuned student"])


def test_mlp_students_and_their_teacher_have_a_table_of_their_own_beside_hinton_et_al(store, tables):
    _, _, ids = store
    hinton = tables[HINTON]
    assert hinton.reference.source == "Hinton et al." and tables[KDTF].reference.source == tables[TUNED].reference.source == "kdtf"
    assert hinton.rows == ("Teacher", "Distillation", FIXED, "Student only")
    assert hinton.temperatures == (1.0, 20.0)
    assert hinton.cell("Teacher", 1.0).run_ids == tuple(ids["he teacher"])
    assert hinton.cell("Teacher", 1.0).reference == pytest.approx(99.33)  # 67 errors
    fixed_teacher = hinton.cell(FIXED, 20.0)
    assert set(fixed_teacher.run_ids) == set(ids["mlp distill T=20"])
    assert fixed_teacher.errors == pytest.approx(135) and fixed_teacher.reference == pytest.approx(99.26)
    assert hinton.cell("Student only", 20.0).errors == pytest.approx(180)
    assert hinton.cell("Student only", 20.0).reference == pytest.approx(98.54)
    # Neither the He teacher nor the MLP students are counted with kdtf's softmax regression.
    assert tables[KDTF].cell("Teacher", 1.0) is None
    assert tables[TUNED].cell("Student only", 5.0).run_ids == tuple(ids["tuned student"])
    markdown = results.render_markdown([hinton])
    assert "| Model | T=1 | T=20 | Hinton et al. T=1 | Hinton et al. T=20 |" in markdown
    # Errors carry the accuracy's spread over seeds, counted in test images (0.07 points: 7 images).
    assert (f"| {FIXED} | 98.30 (1), 170 errors | 98.65 ± 0.07 (2), 135 ± 7 errors | — | 99.26, 74 errors |"
            in markdown)
    assert ("| Student only | 98.20 ± 0.07 (2), 180 ± 7 errors | 98.20 ± 0.07 (2), 180 ± 7 errors | 98.54, 146 errors "
            "| 98.54, 146 errors |") in markdown


def test_markdown_shows_each_recipe_with_the_kdtf_numbers(tables):
    markdown = results.render_markdown(list(tables.values()))
    assert f"## `{KDTF}`\n\n" + EXPECTED_KDTF_TABLE in markdown
    assert "| Student only | 81.00 ± 1.41 (2) | 88.84 | 88.84 |" in markdown
    assert "| Teacher | 91.00 (1) | 97.90 | 98.12 |" in markdown
    assert f"## `{TUNED}`" in markdown and "| Student only | 85.00 (1) | 85.00 (1) | 88.84 | 88.84 |" in markdown


def test_written_files_agree_with_each_other_and_the_markdown(tables, tmp_path):
    paths = results.write_results(list(tables.values()), tmp_path)
    assert [path.name for path in paths] == ["results.md", "results.csv", "results.json", "results.png"]
    markdown = paths[0].read_text(encoding="utf-8")
    with paths[1].open(encoding="utf-8", newline="") as file:
        csv_rows = list(csv.DictReader(file))
    json_rows = json.loads(paths[2].read_text(encoding="utf-8"))
    assert len(csv_rows) == len(json_rows) == sum(len(table.cells) for table in tables.values()) == 24
    for csv_row, json_row in zip(csv_rows, json_rows):
        assert csv_row["table"] == json_row["table"] and csv_row["row"] == json_row["row"]
        assert float(csv_row["mean"]) == json_row["mean"]
        assert (float(csv_row["std"]) if csv_row["std"] else None) == json_row["std"]
        assert int(csv_row["n"]) == json_row["n"] == len(json_row["run_ids"])
        assert csv_row["run_ids"].split(";") == json_row["run_ids"]
        assert (float(csv_row["reference"]) if csv_row["reference"] else None) == json_row["reference"]
        assert float(csv_row["errors"]) == json_row["errors"]
        # The markdown line of this row in this recipe's table must show the same numbers.
        section = markdown.split(f"## `{json_row['table']}`")[1].split("## ")[0]
        line = next(line for line in section.splitlines() if line.startswith(f"| {json_row['row']} |"))
        spread = f" ± {json_row['std']:.2f}" if json_row["std"] is not None else ""
        errors_spread = f" ± {json_row['std'] * 100:.0f}" if json_row["std"] is not None else ""
        errors = f", {json_row['errors']:.0f}{errors_spread} errors" if "student_model=mlp" in json_row["table"] else ""
        assert f"| {json_row['mean']:.2f}{spread} ({json_row['n']}){errors} |" in line
    assert paths[3].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_writing_twice_replaces_the_files(tables, tmp_path):
    first = [path.read_bytes() for path in results.write_results(list(tables.values()), tmp_path)]
    second = [path.read_bytes() for path in results.write_results(list(tables.values()), tmp_path)]
    assert first[:3] == second[:3]
    results.write_results([], tmp_path)
    assert "No finished runs yet" in (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "## " not in (tmp_path / "results.md").read_text(encoding="utf-8")
    assert (tmp_path / "results.csv").read_text(encoding="utf-8").splitlines() == [
        "table,row,temperature,mean,std,n,errors,reference,run_ids"]
    assert json.loads((tmp_path / "results.json").read_text(encoding="utf-8")) == []


def test_empty_experiment_says_there_are_no_finished_runs(store, tmp_path):
    client, _, _ = store
    experiment = client.create_experiment("empty")
    markdown, tables = results.regenerate(experiment, tmp_path)
    assert tables == []
    assert "No finished runs yet" in markdown
    assert all((tmp_path / f"results.{suffix}").exists() for suffix in ("md", "csv", "json", "png"))


def test_regenerate_from_inside_the_calling_run(store, tmp_path):
    client, _, _ = store
    experiment = client.create_experiment("calling")
    log_run(experiment, "distill", "kdtf", 5, 0, 0.50, hard_label_weight="")  # Seed 0 again below: replaced.
    log_run(experiment, "distill", "kdtf", 5, 0, 0.90, hard_label_weight="")
    log_run(experiment, "distill", "kdtf", 5, 7, 0.10, hard_label_weight="", version="0123456789abcdef")
    with mlflow.start_run(experiment_id=experiment) as run:
        mlflow.set_tags({"kdflow.kind": "distill", "kdflow.params": canonical_params("distill", 5, 1, ""),
                         "kdflow.code_version": tracking.code_version()})
        mlflow.log_metric("test_accuracy", 0.92)
        markdown, tables = results.regenerate(experiment, tmp_path, [client.get_run(run.info.run_id)])
        assert run.info.run_id in tables[0].cell("Distillation", 5.0).run_ids
        assert "| Distillation | 91.00 ± 1.41 (2) | 89.14 | 90.77 |" in markdown
        # A run's own tables are read without the rest of the experiment, so they count no other version.
        assert f"Code version `{tracking.code_version()}`.\n" in markdown
        assert markdown == (tmp_path / "results.md").read_text(encoding="utf-8")
        # The report reads the whole experiment: the running, unkeyed run is not in it yet.
        report, _ = results.regenerate(experiment, tmp_path / "report")
    assert "| Distillation | 90.00 (1) | 89.14 | 90.77 |" in report
    assert f"Code version `{tracking.code_version()}`; finished runs of other code versions, not counted: 1." in report


class CountingClient:
    """The real client, counting the runs its searches answer with."""

    def __init__(self):
        self.client, self.answered = mlflow.MlflowClient(), []

    def search_runs(self, experiment_ids, filter_string, page_token=None):
        page = self.client.search_runs(experiment_ids, filter_string, page_token=page_token)
        self.answered += [run.info.run_id for run in page]
        return page


def _same_cells(own_tables, whole_tables):
    """Every cell of a run's own tables is a cell of the whole experiment's tables, the same runs
    giving the same numbers (a Student only cell fills every column, so its column is not compared)."""
    whole = {(cell.row, cell.temperature if cell.row != "Student only" else None, cell.run_ids): cell
             for table in whole_tables for cell in table.cells}
    for table in own_tables:
        for cell in table.cells:
            match = whole[(cell.row, cell.temperature if cell.row != "Student only" else None, cell.run_ids)]
            assert (cell.mean, cell.std, cell.n, cell.errors) == (match.mean, match.std, match.n, match.errors)


def test_a_runs_own_tables_have_the_whole_experiments_cells_and_read_only_their_runs(store, tables):
    client, experiment, ids = store
    counted = [run_id for cell, run_ids in ids.items() if cell != "ignored" for run_id in run_ids]
    anchors = records_by_id(experiment, counted)
    assert {anchor.run_id for anchor in anchors} == set(counted)
    anchors = [anchor for anchor in anchors if anchor.code_version == tracking.code_version()]  # As regenerate does.
    # All the runs at once, as a sweep of them all would: exactly the whole experiment's tables.
    assert results.tables_of(anchors, results.neighbours(experiment, anchors)) == list(tables.values())
    for anchor in anchors:
        spy = CountingClient()
        own = results.tables_of([anchor], results.neighbours(experiment, [anchor], client=spy))
        # What the run logged before: the whole experiment's tables, with itself in them.
        _same_cells(own, results.build_tables(whole_experiment_with(experiment, anchor.run_id)))
        # Its own cell is there, and the searches answered with no run its tables do not show.
        shown = {run_id for table in own for cell in table.cells for run_id in cell.run_ids}
        assert any(anchor.run_id in cell.run_ids for table in own for cell in table.cells) or anchor.run_id in ids["replaced"]
        assert set(spy.answered) <= shown | set(ids["replaced"]), anchor
    calling = next(anchor for anchor in anchors if anchor.run_id == ids["calling"][0])
    (own,) = results.tables_of([calling], results.neighbours(experiment, [calling]))
    assert own.rows == ("Teacher", "Distillation", "Student only")
    assert own.cell("Distillation", 5.0) == tables[KDTF].cell("Distillation", 5.0)
    fixed = next(anchor for anchor in anchors if anchor.run_id == ids["fixed teacher T=5"][0])
    (own,) = results.tables_of([fixed], results.neighbours(experiment, [fixed]))
    # Its row counts kdtf's way distillation at T=1 too (its teacher trained at T=1), and only its row.
    assert own.rows == ("Teacher", FIXED, "Student only")
    assert own.cell(FIXED, 1.0) == tables[KDTF].cell(FIXED, 1.0)
    # A student alone is shown beside the teachers of its setup, not beside every distillation.
    tuned = next(anchor for anchor in anchors if anchor.run_id == ids["tuned student"][0])
    (own,) = results.tables_of([tuned], results.neighbours(experiment, [tuned]))
    assert own.label == TUNED and own.rows == ("Teacher", "Student only") and own.temperatures == (2.0, 5.0)
    student = next(anchor for anchor in anchors if anchor.run_id == ids["student"][0])
    (own,) = results.tables_of([student], results.neighbours(experiment, [student]))
    assert own.label == KDTF and own.rows == ("Teacher", "Student only")


def test_collect_follows_every_page_of_the_search(store):
    """search_runs answers in pages; a stub serves two pages of the real runs to check both are read."""
    from mlflow.store.entities.paged_list import PagedList

    client, experiment, _ = store
    runs = client.search_runs([experiment], "attributes.status = 'FINISHED'")

    class TwoPages:
        def search_runs(self, experiment_ids, filter_string, page_token=None):
            return PagedList(runs[:3], "next") if page_token is None else PagedList(runs[3:], None)

    assert {r.run_id for r in results.collect_runs(experiment, client=TwoPages())} == {
        r.run_id for r in results.collect_runs(experiment, client=client)}
