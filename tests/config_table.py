"""The README's configuration table, made from ``dht/config.py``: each
``Config`` field, its default as written there, its unit, and its
docstring. ``tests/test_readme.py`` checks the README holds it.

    python tests/config_table.py           # print the table
    python tests/config_table.py --write   # put it in README.md, between the markers
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
from pathlib import Path

# Run as a script, tests/ is on the path and the checkout is not.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dht import config as config_module
from dht.cli.options import config_docs

README = Path(__file__).resolve().parents[1] / "README.md"
BEGIN = "<!-- config table: made by `python tests/config_table.py --write` from dht/config.py -->"
END = "<!-- end of config table -->"

UNITS = {
    "local_id": "20 bytes",
    "listen_address": "host:port",
    "bootstrap_addresses": "host:port",
    "listeners": "sockets",
    "state_path": "path",
    "socket_buffer_size": "bytes",
    "amplification_limit": "bytes",
    "cpus": "CPU numbers",
    "max_pending_requests": "requests",
    "request_rate": "requests/s",
    "request_burst": "requests",
    "reassembly_max_records": "events",
    "reassembly_max_records_per_source": "events",
    "max_values_per_key": "values",
    "max_find_values": "values",
    "answer_rate": "bytes/s",
    "unproven_answer_rate": "bytes/s",
    "transfer_rate": "bytes/s",
    "replicate_rate": "bytes/s",  # on main since this branch began
}
"""Units a field's name and type do not tell (see ``unit``)."""


def unit(field: dataclasses.Field[object]) -> str:
    """``UNITS``, else from the name and type: a name with the word
    ``bytes`` is bytes, a float seconds, an int a count, anything else none."""
    if field.name in UNITS:
        return UNITS[field.name]
    if "bytes" in field.name.split("_"):
        return "bytes"
    if field.name.endswith("_rate"):
        return "per s"
    if field.type in ("float", float):
        return "s"
    if field.type in ("int", int):
        return "count"
    return ""


def defaults_as_written() -> dict[str, str]:
    """Each field's default as ``dht/config.py`` writes it (``32 * 1024 * 1024``)."""
    source = inspect.getsource(config_module)
    for node in ast.parse(source).body:
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            out = {}
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    text = ast.get_source_segment(source, stmt.value) if stmt.value else ""
                    out[stmt.target.id] = "[]" if text == "field(default_factory=list)" else text
            return out
    raise LookupError("no class Config in dht/config.py")


def table() -> str:
    docs = config_docs()
    defaults = defaults_as_written()
    rows = ["| Field | Default | Unit | What it is, and why |", "|---|---|---|---|"]
    for field in dataclasses.fields(config_module.Config):
        doc = " ".join(docs.get(field.name, "").split()).replace("|", "\\|")
        default = (defaults.get(field.name) or "").replace("|", "\\|")
        rows.append(f"| `{field.name}` | `{default}` | {unit(field)} | {doc} |")
    return "\n".join(rows)


def replaced(readme: str) -> str:
    """``readme`` with the text between the markers replaced by ``table()``."""
    start = readme.index(BEGIN) + len(BEGIN)
    end = readme.index(END)
    return readme[:start] + "\n" + table() + "\n" + readme[end:]


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        README.write_text(replaced(README.read_text()))
    else:
        print(table())
