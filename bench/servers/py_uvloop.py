"""The asyncio Protocol server of py_asyncio.py, run on uvloop.

    py_uvloop.py PORT [--echo | --http] [--keep-alive] [-q]
"""

import sys

from py_asyncio import main

if __name__ == "__main__":
    sys.exit(main(use_uvloop=True))
