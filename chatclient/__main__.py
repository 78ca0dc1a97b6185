"""`python -m chatclient`: the same program as `python chatclient.py` and `chatclient`."""

import sys

from chatclient.cli import main

if __name__ == "__main__":
    sys.exit(main())
