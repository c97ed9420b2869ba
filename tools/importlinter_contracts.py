"""Contract types for import-linter that its built-in ones lack (see `[tool.importlinter]`).

`only`: the modules of `source_modules` import nothing but the standard library, their own
package and the `allowed_modules` (each with its submodules). Where the built-in `forbidden`
contract needs every unwanted package named, this one names what is wanted, so a dependency
added to the project later is refused too. Needs `include_external_packages = true`: without
it the graph holds no third-party or standard-library modules to judge.

Only direct imports are judged: an allowed module of this project answers for its own imports
under a contract of its own (e.g. `runner.contract`, standard library only).
"""

from __future__ import annotations

import sys
from typing import Any, cast

from grimp import ImportGraph
from importlinter import Contract, ContractCheck, fields, output
from importlinter.domain.imports import Module


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


class OnlyContract(Contract):
    type_name = "only"

    source_modules = fields.SetField(subfield=fields.ModuleField())
    allowed_modules = fields.SetField(subfield=fields.ModuleField(), required=False)
    allow_standard_library = fields.BooleanField(required=False, default=True)

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        sources = sorted(m.name for m in cast(set[Module], self.source_modules))
        allowed = {m.name for m in cast(set[Module] | None, self.allowed_modules) or set()}
        stdlib = sys.stdlib_module_names if cast(bool, self.allow_standard_library) else set()
        missing = [name for name in sources if name not in graph.modules]
        if missing:
            raise ValueError(f"Modules not in the graph: {', '.join(missing)}.")

        def acceptable(imported: str, source: str) -> bool:
            return (within(imported, source) or imported.split(".")[0] in stdlib
                    or any(within(imported, name) for name in allowed))

        illegal: list[dict[str, Any]] = []
        for source in sources:
            for importer in sorted({source} | graph.find_descendants(source)):
                for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                    if acceptable(imported, source):
                        continue
                    details = graph.get_import_details(importer=importer, imported=imported)
                    illegal.append({"importer": importer, "imported": imported,
                                    "line_numbers": [d["line_number"] for d in details]})
        return ContractCheck(kept=not illegal, metadata={"illegal": illegal})

    def render_broken_contract(self, check: ContractCheck) -> None:
        allowed = ["the standard library"] if self.allow_standard_library else []
        allowed += sorted(m.name for m in cast(set[Module] | None, self.allowed_modules) or ())
        output.print_error(f"Only {', '.join(allowed) or 'nothing'} may be imported here:",
                           bold=False)
        output.new_line()
        for link in check.metadata["illegal"]:
            lines = ", ".join(str(n) for n in link["line_numbers"])
            output.print_error(f"- {link['importer']} -> {link['imported']} (l.{lines})",
                               bold=False)
        output.new_line()
