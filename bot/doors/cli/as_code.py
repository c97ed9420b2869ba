"""`routines apply -f FILE|DIR [--dry-run] [--prune]` and `routines export [NAME] [--dir DIR]`:
routines kept as YAML files (the format: `docs/routine.schema.json`, `bot.core.routine_file`).

`apply` prints the diff against the database, routine by routine, then applies it in one
transaction as `ROUTINES_OPERATOR`; `--dry-run` stops after the diff. Routines not in the
files are kept unless `--prune`. `export` writes the same YAML, one file per routine with
`--dir`; exporting, applying that to an empty database and exporting again gives the same
bytes. API tokens are secrets and never in a file: `/routine token` makes them.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bot.core.routine_file import RoutineDocument, dump, read_documents
from bot.doors.cli import offline
from bot.doors.cli.operate import operator_of
from bot.errors import RoutineFileInvalid, RoutineFileProblem

SUFFIXES = (".yaml", ".yml")


def add_parsers(sub: Any) -> None:
    apply = sub.add_parser("apply", help="apply routine files (YAML) to the database")
    apply.add_argument("-f", "--file", dest="path", required=True, type=Path,
                       help="a YAML file, or a directory of them (read recursively)")
    apply.add_argument("--dry-run", action="store_true", help="show the diff, change nothing")
    apply.add_argument("--prune", action="store_true",
                       help="also delete routines that are in no file")
    apply.set_defaults(handler=_apply)
    export = sub.add_parser("export", help="write routines as YAML (what apply reads)")
    export.add_argument("name", nargs="?", type=str.lower, help="one routine (default: all)")
    export.add_argument("--dir", type=Path, help="write one NAME.yaml per routine here")
    export.set_defaults(handler=_export)


def read_path(path: Path) -> list[RoutineDocument]:
    """Every routine document of a file or of the YAML files under a directory, in path
    order; every file is read before any problem is reported, so all are named at once."""
    files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()) \
        if path.is_dir() else [path]
    documents: list[RoutineDocument] = []
    problems: list[RoutineFileProblem] = []
    for file in files:
        try:
            documents.extend(read_documents(file.read_text(encoding="utf-8"), str(file)))
        except RoutineFileInvalid as exc:
            problems.extend(exc.problems)
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(RoutineFileProblem(str(file), 1, "file", f"cannot read it: {exc}"))
    if problems:
        raise RoutineFileInvalid(problems)
    return documents


def read_prompt(source: str, relative: str) -> str:
    """A `prompt_file`, relative to the YAML file that names it."""
    return (Path(source).parent / relative).read_text(encoding="utf-8")


def _apply(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    operator = operator_of(env)
    documents = read_path(args.path)
    with offline.services(env) as services:
        plan = services.catalog.apply(documents, operator, read_prompt, prune=args.prune,
                                      dry_run=args.dry_run)
    for line in plan.lines():
        print(line)
    if not plan.changed:
        print("nothing to change")
    elif not plan.applied:
        print("dry run: nothing was changed")
    else:
        print("applied")


def _export(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    with offline.services(env) as services:
        specs = services.catalog.export(args.name)
    if args.dir is None:
        print(dump(specs), end="")
        return
    args.dir.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        target = args.dir / f"{spec.name}.yaml"
        target.write_text(dump([spec]), encoding="utf-8")
        print(f"wrote {target}")
