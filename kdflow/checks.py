"""The check of an experiment's expected results: each expected cell against the results table
its selector picks, within its tolerance, outside it, or missing.

A sweep writes the outcome as ``check.md``, the tag ``kdflow.check`` and one printed line; with
``check=strict`` a cell outside its tolerance, or missing, fails the sweep, so a reproduction can
gate CI. Tables are ``results.Table``s, read only through ``identity``, ``label`` and ``cell``.
"""

from dataclasses import dataclass

WITHIN, OUTSIDE, MISSING = "within", "outside", "missing"
# A difference equal to the tolerance is within it, whatever the rounding of the two numbers.
SLACK = 1e-9


@dataclass(frozen=True)
class CellCheck:
    """One expected cell beside what the tables measured."""
    expected: dict  # a cell of Experiment.expected["cells"]
    status: str  # within, outside or missing
    table: str = ""  # the label of the table the cell was looked up in; empty when none matched
    measured: object = None  # the results table's Cell; None when missing
    reason: str = ""  # why it is missing

    @property
    def difference(self) -> float | None:
        return None if self.measured is None else self.measured.mean - self.expected["accuracy"]


@dataclass(frozen=True)
class Check:
    """The expected cells of an experiment, each found within, outside its tolerance, or missing."""
    cells: tuple[CellCheck, ...]

    @property
    def counts(self) -> dict[str, int]:
        return {status: sum(cell.status == status for cell in self.cells) for status in (WITHIN, OUTSIDE, MISSING)}

    @property
    def passed(self) -> bool:
        return all(cell.status == WITHIN for cell in self.cells)

    def fails(self, mode: str) -> bool:
        """Whether the sweep fails for its results under ``check=mode``: only strict fails."""
        return mode == "strict" and not self.passed

    def line(self) -> str:
        if not self.cells:
            return "check: no expected results, nothing to check"
        counts = self.counts
        return (
            f"check: {counts[WITHIN]} within, {counts[OUTSIDE]} outside, {counts[MISSING]} missing "
            f"of {len(self.cells)} expected cells"
        )

    def tag(self) -> str:
        counts = self.counts
        if not self.cells:
            return "none"
        if counts[OUTSIDE]:
            return "failed: " + ", ".join(f"{counts[status]} {status}" for status in (OUTSIDE, MISSING) if counts[status])
        if counts[MISSING]:
            return f"incomplete: {counts[MISSING]} missing"
        return "passed"

    def markdown(self) -> str:
        if not self.cells:
            return self.line()
        lines = [
            "| table | row | T | expected (%) | measured (%) | difference | status | runs |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for cell in self.cells:
            expected, measured = cell.expected, cell.measured
            shown = "—"
            if measured is not None:
                spread = f" ± {measured.std:.2f}" if measured.std is not None else ""
                shown = f"{measured.mean:.2f}{spread} ({measured.n})"
            difference = "—" if cell.difference is None else f"{cell.difference:+.2f}"
            status = f"{cell.status}: {cell.reason}" if cell.reason else cell.status
            runs = ", ".join(measured.run_ids) if measured is not None else ""
            table = cell.table or _selector_text(expected["table"]) or "—"
            columns = [table, expected["row"], f"{expected['temperature']:g}",
                       f"{expected['accuracy']:.2f} ± {expected['tolerance']:g}", shown, difference, status, runs]
            lines.append("| " + " | ".join(column.replace("|", "\\|") for column in columns) + " |")
        return "\n".join(lines)


def _selector_text(selector: dict) -> str:
    return ", ".join(f"{name}={value}" for name, value in selector.items())


def check(expected: dict, tables) -> Check:
    """Compare each expected cell with the results table its selector picks (results.Table)."""
    return Check(tuple(_check_cell(cell, tables) for cell in expected.get("cells", ())))


def _check_cell(cell: dict, tables) -> CellCheck:
    selector = cell["table"]
    candidates = [table for table in tables if all(table.identity.get(k) == v for k, v in selector.items())]
    if not candidates:
        reason = f"no table matched {_selector_text(selector)}" if selector else "there is no results table"
        return CellCheck(cell, MISSING, reason=reason)
    if len(candidates) > 1:
        labels = "; ".join(table.label for table in candidates)
        if selector:
            reason = f"the selector {_selector_text(selector)} is ambiguous: it matches {labels}"
        else:
            count = len(candidates)
            reason = f"the selector is ambiguous: with no table selector the cell matches all {count} tables ({labels})"
        return CellCheck(cell, MISSING, reason=reason)
    table = candidates[0]
    measured = table.cell(cell["row"], cell["temperature"])
    if measured is None:
        reason = f"the table has no cell {cell['row']} at T={cell['temperature']:g}"
        return CellCheck(cell, MISSING, table.label, reason=reason)
    within = abs(measured.mean - cell["accuracy"]) <= cell["tolerance"] + SLACK
    return CellCheck(cell, WITHIN if within else OUTSIDE, table.label, measured)
