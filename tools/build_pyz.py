"""Build chatclient.pyz: the whole program in one file, to hand a peer.

    python3 tools/build_pyz.py                 writes chatclient.pyz in this folder
    python3 tools/build_pyz.py -o /tmp/x.pyz   writes it there

The peer runs it with `python3 chatclient.pyz` on a machine where the three
dependencies are installed (`pip install cryptography spake2 zeroconf`). It holds the
chatclient/ package as it is in this checkout, and nothing else; only the
standard library's zipapp builds it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zipapp
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# zipapp's own __main__ drops main()'s return value: this one makes it the exit status.
MAIN = "import sys\n\nfrom chatclient.cli import main\n\nsys.exit(main())\n"


def build(target: Path) -> Path:
    """Write the archive to `target` (replacing it) and return its path."""
    with tempfile.TemporaryDirectory() as staging:
        package = Path(staging) / "chatclient"
        package.mkdir()
        for source in sorted((ROOT / "chatclient").glob("*.py")):
            shutil.copy2(source, package / source.name)
        (Path(staging) / "__main__.py").write_text(MAIN, encoding="utf-8")
        zipapp.create_archive(staging, target, interpreter="/usr/bin/env python3", compressed=True)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description="Build chatclient.pyz, one file to hand a peer.")
    parser.add_argument("-o", "--output", default="chatclient.pyz", help="where to write it")
    args = parser.parse_args()
    try:
        path = build(Path(args.output))
    except OSError as exc:
        print(f"error: could not write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"Wrote {path} ({path.stat().st_size // 1024} KB): your peer runs `python3 {path.name}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
