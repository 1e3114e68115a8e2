"""Figures that live with their runs: result records and the pages rendered from them.

A run that produces a figure worth quoting (``demo``, ``testbed check``, the side-by-side
comparison with Heretic, the experiments) writes a :class:`ResultRecord` — a small JSON file
with the table it measured and where it came from: date, circuitlab version, the model's
weights fingerprint and the exact command. ``docs/results.md`` and the README's results
table are *rendered* from those files by :func:`render` (``make results``), never typed by
hand, so a figure cannot drift from the run that measured it. A test checks that the
committed pages equal what the records render to.

Records are named by what they measure (``demo.json``, ``testbed-check.json``), so a rerun
replaces the figure it re-measures; each record keeps its ``history`` of earlier tables
(date, weights, rows), which the results page lists as dated entries.

Example:
    >>> rec = ResultRecord.new("demo", "make demo on the organism", ["", "before", "after"],
    ...                        [["AdvBench test refusals", "64/64", "2/64"]],
    ...                        command="make demo", weights="c57e1e09c4d6")
    >>> rec.save("docs/results")                              # doctest: +SKIP
    >>> render("docs/results", "docs/results.md", "README.md")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from circuitlab.evaluate.stats import Proportion

__all__ = [
    "from_export",
    "from_side_by_side",
    "from_testbed_check",
    "keep_earlier",
    "readme_markers",
    "ResultRecord",
    "load_records",
    "readme_block",
    "render",
    "results_page",
]

FORMAT = 1


def readme_markers(name: str) -> tuple[str, str]:
    """The README comments around record ``name``'s table (everything between is rendered)."""
    return (
        f"<!-- result {name}: rendered by `make results` from docs/results/{name}.json -->",
        f"<!-- /result {name} -->",
    )


def _version() -> str:
    from circuitlab import __version__

    return __version__


@dataclass(frozen=True)
class ResultRecord:
    """One measured table with its provenance.

    Attributes:
        name: file stem and identity (``demo``); a new record of the same name replaces it.
        title: one line saying what was measured, on what.
        columns, rows: the table, cells already formatted (``"2/64 [0.9%, 11%]"``).
        command: the command that reproduces it, exactly as a user types it.
        weights: fingerprint of the model weights measured (``None`` where not one model).
        date, version: when, and with which circuitlab.
        readme: whether the README's results section shows this table.
        notes: short lines printed under the table (the judge, the machine).
        details: longer lines (method, rules) printed under it on the results page only,
            so the README stays a product page.
        history: earlier tables of this record, newest first (``date, weights, version,
            rows``), kept when a rerun replaces it.
    """

    name: str
    title: str
    columns: list[str]
    rows: list[list[str]]
    command: str
    weights: str | None = None
    date: str = ""
    version: str = ""
    readme: bool = False
    notes: list[str] = field(default_factory=list)
    details: list[str] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)
    format: int = FORMAT

    @classmethod
    def new(cls, name: str, title: str, columns: Sequence[str], rows, **kw) -> ResultRecord:
        """A record dated now, stamped with this circuitlab's version; cells become text."""
        return cls(
            name=name,
            title=title,
            columns=[str(c) for c in columns],
            rows=[[str(c) for c in row] for row in rows],
            date=kw.pop("date", None) or datetime.date.today().isoformat(),
            version=kw.pop("version", None) or _version(),
            **kw,
        )

    @classmethod
    def load(cls, path: str | Path) -> ResultRecord:
        data = json.loads(Path(path).read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"{path}: result record format {data.get('format')} != {FORMAT}")
        return cls(**data)

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/NAME.json`` atomically; an existing record's table moves to history."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.name}.json"
        record = self
        if path.is_file():
            old = ResultRecord.load(path)
            if (old.rows, old.weights) != (self.rows, self.weights):
                past = {k: getattr(old, k) for k in ("date", "weights", "version", "rows")}
                record = replace(self, history=[past, *old.history])
            else:
                record = replace(self, history=old.history)
        text = json.dumps(asdict(record), indent=1, ensure_ascii=False) + "\n"
        # Temp file then rename: an interrupted run leaves the old record, never half of one.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
        return path


PARTS = "Measured in parts, one settings hash, each part's arms paired with its own baseline runs: "


def keep_earlier(
    record: ResultRecord,
    old: ResultRecord,
    key: Sequence[str],
    combine: Callable[[Sequence[str], Sequence[str], Sequence[str]], list[str]] | None = None,
) -> ResultRecord:
    """``record`` plus the rows of ``old`` whose ``key`` cells it lacks, with their notes.

    For a suite run in parts (``experiments/validate.py --only``): arms measured earlier stay
    in the table beside those measured now, each part dated in a detail line. Refused unless
    both agree on columns, weights and details (the settings, seeds and rule), so rows of
    another design cannot be mixed in. A note belongs to the rows whose last key cell opens
    it (``"cones (…): …"``).

    Args:
        key: the columns that name a row (``("organism", "arm")``); the last one groups rows.
        combine: ``(columns, new_row, old_row) -> row`` for a row both parts hold (a part
            may have run an arm on some organisms only); default: the new row.
    """
    if record.columns != old.columns:
        raise ValueError(f"{record.name}: columns differ from the earlier record's; rerun all")

    def settings_of(r: ResultRecord) -> list[str]:
        return [d for d in r.details if not d.startswith(PARTS)]

    settings = settings_of(record)
    if (old.weights, settings_of(old)) != (record.weights, settings):
        raise ValueError(
            f"{record.name}: the earlier record has other weights or settings "
            f"({old.weights} vs {record.weights}); its rows cannot stand beside these"
        )
    cols = [record.columns.index(k) for k in key]

    def name(row: Sequence[str]) -> tuple[str, ...]:
        return tuple(row[i] for i in cols)

    def group(note: str) -> str:
        return note.replace(":", " ").split(" ", 1)[0]

    earlier = {name(r): r for r in old.rows}
    rows_now, old_left = [], set()  # old_left: groups the earlier part still supplies
    for row in record.rows:
        if combine is not None and name(row) in earlier:
            merged = combine(record.columns, row, earlier[name(row)])
            if merged != list(row):
                old_left.add(row[cols[-1]])
            row = merged
        rows_now.append(list(row))
    new_names = {name(r) for r in record.rows}
    kept = [r for r in old.rows if name(r) not in new_names]
    old_left |= {r[cols[-1]] for r in kept}
    if not old_left:
        return record
    # Group order: the earlier table's, then groups new in this one; rows by leading keys.
    order = list(dict.fromkeys([r[cols[-1]] for r in old.rows + record.rows]))
    leads = list(dict.fromkeys(name(r)[:-1] for r in old.rows + record.rows))
    rows = sorted(
        kept + rows_now, key=lambda r: (leads.index(name(r)[:-1]), order.index(r[cols[-1]]))
    )
    groups_now = {r[cols[-1]] for r in record.rows}
    # A note speaks for its group as measured in one part: the newer part's wins.
    notes = [n for n in old.notes if group(n) not in groups_now] + list(record.notes)
    notes.sort(key=lambda n: order.index(group(n)) if group(n) in order else len(order))
    parts: list[tuple[list[str], str]] = []
    for line in old.details:
        if line.startswith(PARTS):
            for part in line[len(PARTS) :].rstrip(".").split("; "):
                groups, date = part.rsplit(": ", 1)
                parts.append((groups.split(", "), date))
    if not parts:
        parts = [(list(dict.fromkeys(r[cols[-1]] for r in old.rows)), old.date)]
    parts = [([g for g in gs if g in old_left], d) for gs, d in parts]
    parts = [(gs, d) for gs, d in parts if gs]
    parts.append((sorted(groups_now, key=order.index), record.date))
    line = PARTS + "; ".join(f"{', '.join(gs)}: {d}" for gs, d in parts) + "."
    return replace(record, rows=rows, notes=notes, details=[*settings, line])


def load_records(folder: str | Path) -> list[ResultRecord]:
    """Every record in ``folder``, in file-name order."""
    return [ResultRecord.load(p) for p in sorted(Path(folder).glob("*.json"))]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |"]
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _stamp(r: ResultRecord) -> str:
    weights = f", weights `{r.weights}`" if r.weights else ""
    return f"{r.date}, circuitlab {r.version}{weights}. Reproduce: `{r.command}`"


def readme_block(record: ResultRecord) -> str:
    """A record's table as the README shows it, between its markers."""
    begin, end = readme_markers(record.name)
    notes = " " + " ".join(record.notes) if record.notes else ""
    more = " Method and rules: [docs/results.md](docs/results.md)." if record.details else ""
    lines = [begin, "", *_table(record.columns, record.rows), ""]
    return "\n".join([*lines, f"<sub>{_stamp(record)}{notes}{more}</sub>", end])


def results_page(records: Sequence[ResultRecord]) -> str:
    """``docs/results.md``: every record's current table, then its dated history."""
    out = [
        "# Results",
        "",
        "Rendered by `make results` from the JSON records in `docs/results/`, which the runs",
        "themselves write; edit the runs, not this page. Each table gives the command that",
        "reproduces it, the date, the circuitlab version and the fingerprint of the weights.",
    ]
    for r in records:
        out += ["", f"## {r.title}", "", _stamp(r), "", *_table(r.columns, r.rows)]
        lines = [*r.details, *r.notes]
        out += [""] + [f"- {n}" for n in lines] if lines else []
        for past in r.history:
            weights = f", weights `{past['weights']}`" if past.get("weights") else ""
            out += ["", f"### Earlier: {past['date']} (circuitlab {past['version']}{weights})"]
            out += ["", *_table(r.columns, past["rows"])]
    return "\n".join(out) + "\n"


def _splice(readme: str, record: ResultRecord) -> str:
    begin, end = readme_markers(record.name)
    start, stop = readme.find(begin), readme.find(end)
    if start < 0 or stop < start:
        raise ValueError(f"README has no markers for result {record.name!r}: add {begin} {end}")
    return readme[:start] + readme_block(record) + readme[stop + len(end) :]


def render(
    folder: str | Path, page: str | Path, readme: str | Path | None = None, check: bool = False
) -> list[Path]:
    """Render the records of ``folder`` into ``page`` and their marked places in the README.

    With ``check`` nothing is written; the files that differ from their rendering are
    returned (empty: up to date).
    """
    records = load_records(folder)
    wanted = {Path(page): results_page(records)}
    if readme is not None:
        text = Path(readme).read_text()
        for record in records:
            if record.readme:
                text = _splice(text, record)
        wanted[Path(readme)] = text
    stale = [p for p, text in wanted.items() if not p.is_file() or p.read_text() != text]
    if not check:
        for p in stale:
            p.write_text(wanted[p])
    return stale


def _ci(k: int, n: int, low: float, high: float) -> str:
    return f"{k}/{n} [{low:.1%}, {high:.1%}]"


def from_export(folder: str | Path, name: str, command: str, title: str, **kw) -> ResultRecord:
    """A record of an export's test-split scorecards (base and edit) and its parity proof,
    read from the ``circuitlab_manifest.json`` the export wrote."""
    data = json.loads((Path(folder) / "circuitlab_manifest.json").read_text())
    record = data.get("scorecard") or {}
    test, parity = record.get("test") or {}, data["parity"]
    base, edited = test.get("base"), test.get("edited")
    if not base or not edited:
        raise ValueError(f"{folder}: the manifest holds no test-split scorecards")
    rows = []
    for label, key, total, ci in (
        ("refusals, harmful test split", "refusals", "n_harmful", "refusal_ci"),
        ("over-refusals, harmless test split", "over_refusals", "n_harmless", "over_refusal_ci"),
    ):
        cells = [_ci(c[key], c[total], *c["derived"][ci]) for c in (base, edited)]
        rows.append([label, *cells])
    rows.append(
        [f"KL, first token / {edited['kl_k_tokens']} tokens (harmless test)", "0 / 0",
         f"{edited['kl_first']:.3f} / {edited['kl_k']:.3f}"]
    )  # fmt: skip
    rows.append(["degenerate answers", str(base["degenerate"]), str(edited["degenerate"])])
    if base.get("capability_n"):
        cells = [
            _ci(c["capability_correct"], c["capability_n"], *c["derived"]["capability_ci"])
            for c in (base, edited)
        ]
        rows.append([f"{base.get('capability_source', 'capability')} correct", *cells])
    rows.append(
        ["export vs hooks", "",
         f"max |Δlogit| {parity['max_abs_logit_diff']:.1e} (bar {parity['tolerance']:g}), "
         f"greedy {parity['greedy_agree']}/{parity['n_prompts']} identical"]
    )  # fmt: skip
    chosen = record.get("chosen") or {}
    notes = [f"Judge: {base['judge']}."]
    if chosen:
        notes.insert(0, f"Chosen: trial {chosen['trial']} ({record.get('rule', '')}).")
    study = str(record.get("study", ""))
    weights = study.split("-")[-2] if study.count("-") >= 2 else None
    return ResultRecord.new(
        name, title, ["", "base", edited["model"]], rows, command=command,
        weights=kw.pop("weights", None) or weights, notes=notes, **kw,
    )  # fmt: skip


def from_testbed_check(path: str | Path, name: str, command: str, title: str, **kw) -> ResultRecord:
    """A record of ``circuitlab testbed check --json``: refusals per prompt set."""
    data = json.loads(Path(path).read_text())
    rows = [[v["name"], _ci(v["refused"], v["n"], v["low"], v["high"])] for v in data.values()]
    return ResultRecord.new(name, title, ["prompt set", "refused [95 % CI]"], rows,
                            command=command, **kw)  # fmt: skip


def _pooled(cards: Sequence[dict], key: str, total: str) -> str:
    k, n = sum(c[key] for c in cards), sum(c[total] for c in cards)
    low, high = Proportion(k, n).interval
    per_seed = ", ".join(str(c[key]) for c in cards)
    seeds = f" (per seed {per_seed} of {cards[0][total]})" if len(cards) > 1 else ""
    return f"{_ci(k, n, low, high)}{seeds}"


def _spread(values: Sequence[float], fmt: str = ".3f") -> str:
    mean = sum(values) / len(values)
    if len(values) == 1:
        return format(mean, fmt)
    return f"{mean:{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]"


def from_side_by_side(path: str | Path, name: str, command: str, title: str, **kw):
    """A record of ``experiments/heretic_side_by_side.py``'s JSON: each tool's exports (one
    per seed) against the organism, refusals pooled over seeds with a Wilson interval (and
    per seed), KL as mean [min, max] over seeds, and the runs' wall and CPU time."""
    data = json.loads(Path(path).read_text())
    cards, runs = data["scores"]["cards"], data["runs"]
    tools: dict[str, list[str]] = {}
    for key in cards:
        if key != "organism":
            tools.setdefault(key.rsplit("-seed", 1)[0], []).append(key)
    labels = {"heretic": "Heretic 1.4", "circuitlab": "circuitlab abliterate"}
    columns = [
        "",
        "organism",
        *(
            f"{labels.get(t, t)} ({len(k)} seed{'s' if len(k) > 1 else ''})"
            for t, k in tools.items()
        ),
    ]
    base = cards["organism"]
    groups = [[cards[k] for k in keys] for keys in tools.values()]
    rows = [
        [f"held-out harmful refusals (JailbreakBench + StrongREJECT, {base['n_harmful']})",
         _pooled([base], "refusals", "n_harmful"),
         *(_pooled(g, "refusals", "n_harmful") for g in groups)],
        [f"held-out harmless refusals ({base['n_harmless']})",
         _pooled([base], "over_refusals", "n_harmless"),
         *(_pooled(g, "over_refusals", "n_harmless") for g in groups)],
        ["first-token KL, held-out harmless (mean [min, max] over seeds)", "0",
         *(_spread([c["kl_first"] for c in g]) for g in groups)],
        [f"KL over {base['kl_k_tokens']} tokens", "0",
         *(_spread([c["kl_k"] for c in g]) for g in groups)],
        ["degenerate answers", str(base["degenerate"]),
         *(", ".join(str(c["degenerate"]) for c in g) for g in groups)],
        ["whole run, wall s (search, choice, export)", "",
         *(_spread([runs[k]["wall_s"] for k in keys], ".0f") for keys in tools.values())],
        ["whole run, CPU s", "",
         *(_spread([runs[k]["cpu_s"] for k in keys], ".0f") for keys in tools.values())],
    ]  # fmt: skip
    if all(runs[k].get("search") for keys in tools.values() for k in keys):
        rows.append(
            ["search: seconds per trial that generates (trials that generate / all)", "",
             *(_spread([runs[k]["search"]["generating_s"] / runs[k]["search"]["generating"]
                        for k in keys], ".1f")
               + f" ({sum(runs[k]['search']['generating'] for k in keys)}"
               f"/{sum(runs[k]['search']['trials'] for k in keys)})"
               for keys in tools.values())]
        )  # fmt: skip
    settings = data["settings"]
    notes = [
        f"{settings['trials']} trials per run, {settings['threads']} thread(s), seeds "
        f"{', '.join(map(str, settings['seeds']))}; direction prompts {settings['n_train']} + "
        f"{settings['n_train']}, search prompts {settings['n_search']} harmful + "
        f"{settings['n_kl']} harmless; both tools see the same prompts.",
        f"Judge: {base['judge']}, greedy, {settings['max_new_tokens']} tokens; the same for "
        "every model. Load average during the runs: "
        + ", ".join(f"{x:.1f}" for x in data.get("load_average", []))
        + ".",
    ]
    return ResultRecord.new(name, title, columns, rows, command=command, notes=notes, **kw)


def _validation(path: str | Path) -> tuple[dict, list, list[str]]:
    """``validation.json`` read back: the data, its comparisons recomputed from the run rows
    under its rule (as the suite's own summary does), and the intro and rule as details."""
    from circuitlab.validation import AcceptanceRule, compare

    data = json.loads(Path(path).read_text())
    rule = AcceptanceRule(**data["rule"])
    details = [n for n in (data.get("intro", ""), rule.describe()) if n]
    return data, compare(data["rows"], rule=rule), details


def from_validation(path: str | Path, name: str, command: str, title: str, **kw) -> ResultRecord:
    """A record of ``experiments/validate.py``'s ``validation.json``: per arm and organism,
    the paired differences against the baseline (with intervals and minimum detectable
    effects) and the primary metric's p; the rule and each arm's verdict as notes."""
    from circuitlab.validation import tests_table, verdicts

    data, comparisons, details = _validation(path)
    columns, rows = tests_table(comparisons)
    changes = data.get("changes") or {}
    notes = [
        f"{arm}{f' ({changes[arm]})' if arm in changes else ''}: {line}"
        for arm, line in verdicts(comparisons).items()
    ]
    return ResultRecord.new(
        name, title, columns, rows, command=command, notes=notes, details=details, **kw
    )


def from_validation_verdicts(
    path: str | Path, name: str, command: str, title: str, **kw
) -> ResultRecord:
    """The README's short form of ``validation.json``: one row per arm, what it changes, the
    primary metric's paired difference per organism in words, and whether it helps."""
    from circuitlab.validation import verdict_table

    data, comparisons, details = _validation(path)
    columns, rows = verdict_table(comparisons, data.get("changes"))
    return ResultRecord.new(name, title, columns, rows, command=command, details=details, **kw)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m circuitlab.report.results")
    parser.add_argument("--records", default="docs/results", help="folder of JSON records")
    parser.add_argument("--page", default="docs/results.md")
    parser.add_argument("--readme", default="README.md", help="'' leaves the README alone")
    parser.add_argument("--check", action="store_true", help="fail if a page is stale")
    new = parser.add_argument_group("record a run first (then render)")
    new.add_argument("--from-export", metavar="DIR", help="an export folder (its manifest)")
    new.add_argument("--from-check", metavar="JSON", help="a `testbed check --json` file")
    new.add_argument(
        "--from-side-by-side", metavar="JSON", help="experiments/heretic_side_by_side.py's output"
    )
    new.add_argument("--from-validation", metavar="JSON", help="experiments/validate.py's output")
    new.add_argument(
        "--from-validation-verdicts", metavar="JSON", help="the same, one plain row per arm"
    )
    new.add_argument("--name", help="record name (file stem)")
    new.add_argument("--title", help="what was measured, on what")
    new.add_argument("--command", dest="run_command", help="the command that reproduces it")
    new.add_argument("--weights", help="fingerprint of the weights measured")
    new.add_argument("--in-readme", action="store_true", help="show it in the README")
    new.add_argument(
        "--keep-earlier",
        action="store_true",
        help="validation only: keep the existing record's arms this file lacks (same settings)",
    )
    args = parser.parse_args(argv)
    builders = {
        "from_export": from_export, "from_check": from_testbed_check,
        "from_side_by_side": from_side_by_side, "from_validation": from_validation,
        "from_validation_verdicts": from_validation_verdicts,
    }  # fmt: skip
    chosen = [key for key in builders if getattr(args, key)]
    if chosen:
        source, build = getattr(args, chosen[0]), builders[chosen[0]]
        if not (args.name and args.title and args.run_command):
            parser.error("--from-* need --name, --title and --command")
        record = build(
            source, args.name, args.run_command, args.title, weights=args.weights,
            readme=args.in_readme,
        )  # fmt: skip
        if args.keep_earlier:
            # A suite run in parts: the arms of an earlier part keep their rows.
            from circuitlab.validation import combine_verdict_rows

            keys = {
                "from_validation": (("organism", "arm"), None),
                "from_validation_verdicts": (("arm",), combine_verdict_rows),
            }
            if chosen[0] not in keys:
                parser.error("--keep-earlier goes with --from-validation(-verdicts)")
            earlier = Path(args.records) / f"{args.name}.json"
            if earlier.is_file():
                key, combine = keys[chosen[0]]
                record = keep_earlier(record, ResultRecord.load(earlier), key, combine)
        sys.stdout.write(f"recorded: {record.save(args.records)}\n")
    stale = render(args.records, args.page, args.readme or None, check=args.check)
    for p in stale:
        sys.stdout.write(f"{'stale' if args.check else 'rendered'}: {p}\n")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
