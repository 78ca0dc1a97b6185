#!/usr/bin/env python3
"""Start chatclient from a checkout: `python chatclient.py` runs the package beside it."""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if not os.path.isfile(os.path.join(HERE, "chatclient", "__init__.py")):
    sys.exit(
        f"error: there is no chatclient/ folder beside {os.path.join(HERE, 'chatclient.py')}, and "
        "this file only starts it: get the whole checkout (git clone; `pip install .` in it "
        "gives the chatclient command), or the one file chatclient.pyz (README.md, 'Your peer')"
    )
sys.path[:] = [HERE, *(entry for entry in sys.path if os.path.abspath(entry or ".") != HERE)]
from chatclient.cli import main  # noqa: E402 (after the path is set: never a stale installed copy)

if __name__ == "__main__":
    sys.exit(main())
