"""Regenerate the FlatBuffers Python code for schema/kademlia.fbs.

flatc writes modules that import each other as ``Kademlia.<Table>`` (the schema
namespace as a top-level package). We ship them inside ``dht.wire.fb``, so this
script runs flatc into a scratch directory and rewrites those imports to be
package-relative. ``make generate`` calls it; a test runs it again and compares.

Usage: python schema/generate.py FLATC OUT_DIR
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCHEMA = Path(__file__).resolve().parent / "kademlia.fbs"
FLATC_ARGS = ["--python", "--python-typing", "--python-no-type-prefix-suffix"]


def generate(flatc: str, out_dir: Path) -> list[Path]:
    """Generate the modules into ``out_dir`` (replacing its .py files)."""
    with tempfile.TemporaryDirectory() as scratch:
        subprocess.run([flatc, *FLATC_ARGS, "-o", scratch, str(SCHEMA)], check=True)
        generated = sorted((Path(scratch) / "Kademlia").glob("*.py"))
        if not generated:
            raise RuntimeError(f"flatc produced no Python modules from {SCHEMA}")
        out_dir.mkdir(parents=True, exist_ok=True)
        for old in out_dir.glob("*.py"):
            old.unlink()
        written = []
        for module in generated:
            text = module.read_text().replace("from Kademlia.", "from .")
            target = out_dir / module.name
            target.write_text(text)
            written.append(target)
        shutil.rmtree(out_dir / "__pycache__", ignore_errors=True)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    for path in generate(sys.argv[1], Path(sys.argv[2])):
        print(path)
