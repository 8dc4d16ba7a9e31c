"""The README: its examples run as pasted, and its configuration table is
``dht/config.py``'s (``python tests/config_table.py --write`` remakes it)."""

from __future__ import annotations

import dataclasses
import re

import pytest
from config_table import BEGIN, END, README, replaced

import dht
from dht.conformance import check_storage

pytestmark = pytest.mark.timeout(60)


def blocks() -> dict[str, str]:
    """The README's Python blocks, by the name of the ``<!-- example: NAME -->``
    before them (unnamed ones by their position)."""
    found = re.findall(
        r"(?:<!-- example: (\w+) -->\n)?```python\n(.*?)```", README.read_text(), re.S
    )
    return {name or f"block {i}": code for i, (name, code) in enumerate(found)}


def run(name: str) -> dict[str, object]:
    namespace: dict[str, object] = {"__name__": f"readme_{name}"}
    exec(compile(blocks()[name], f"README.md ({name})", "exec"), namespace)
    return namespace


def test_the_configuration_table_is_that_of_config_py() -> None:
    readme = README.read_text()
    table = readme[readme.index(BEGIN) : readme.index(END)]
    for field in dataclasses.fields(dht.Config):
        assert f"| `{field.name}` |" in table, f"Config.{field.name} is not in README.md's table"
    assert replaced(readme) == readme, "run: python tests/config_table.py --write"


@pytest.mark.parametrize("name", sorted(blocks()))
def test_every_python_block_compiles(name: str) -> None:
    compile(blocks()[name], f"README.md ({name})", "exec")


def test_the_first_example_runs_as_pasted(capsys: pytest.CaptureFixture[str]) -> None:
    run("first")
    assert capsys.readouterr().out == "[b'hello']\nb'hello' None\n"


def test_the_asyncio_example_runs_as_pasted(capsys: pytest.CaptureFixture[str]) -> None:
    run("asyncio")
    assert capsys.readouterr().out == "[b'hello']\nb'hello'\n"


def test_the_dict_storage_passes_the_conformance_suite() -> None:
    storage = run("storage")["DictStorage"]
    outcomes = check_storage(lambda clock_ns, **limits: storage(clock_ns), limits=False)  # type: ignore[operator]
    assert "passed" in outcomes.values()
