"""An import-linter contract type the built-in ones lack: an allow-list.

`forbidden` names what a module may not import; a client library that must install with
httpx alone needs the opposite - "these modules import the standard library, httpx and
nothing else" - so that a new import of anything else (a server dependency, another part of
apiauth) fails `make lint` without anyone having to foresee and list it.

    [[tool.importlinter.contracts]]
    type = "only_imports"
    source_modules = ["apiauth.client"]
    allowed_modules = ["httpx"]          # besides the standard library

The session needs `include_external_packages = true`, so that third-party and standard
library imports are in the graph.
"""

from __future__ import annotations

import sys
from typing import Any

from grimp import ImportGraph
from importlinter import Contract, ContractCheck, fields, output


class OnlyImportsContract(Contract):
    """The source modules (and their submodules) import only the standard library, the
    allowed modules (and their submodules), and each other."""

    type_name = "only_imports"

    source_modules = fields.ListField(subfield=fields.ModuleField())
    allowed_modules = fields.ListField(subfield=fields.ModuleField())

    def check(self, graph: ImportGraph, verbose: bool) -> ContractCheck:
        sources: set[str] = set()
        for module in self.source_modules:  # type: ignore[attr-defined]
            sources.add(module.name)
            if not graph.is_module_squashed(module.name):
                sources |= graph.find_descendants(module.name)
        allowed = [module.name for module in self.allowed_modules]  # type: ignore[attr-defined]

        def permitted(imported: str) -> bool:
            return (
                imported in sources
                or imported.partition(".")[0] in sys.stdlib_module_names
                or any(imported == name or imported.startswith(name + ".") for name in allowed)
            )

        illegal: list[dict[str, Any]] = []
        for importer in sorted(sources):
            for imported in sorted(graph.find_modules_directly_imported_by(importer)):
                if permitted(imported):
                    continue
                details = graph.get_import_details(importer=importer, imported=imported)
                lines = ", ".join(str(detail["line_number"]) for detail in details)
                illegal.append({"importer": importer, "imported": imported, "lines": lines})
        return ContractCheck(kept=not illegal, metadata={"illegal": illegal})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for link in check.metadata["illegal"]:
            output.print_error(
                f"{link['importer']} -> {link['imported']} (l. {link['lines']})", bold=False
            )
            output.new_line()
