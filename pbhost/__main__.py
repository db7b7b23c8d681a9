"""`python -m pbhost` and the `pbhost` console script.

`pbhost serve` starts PocketBase before importing click, asyncio and the rest (see prespawn.py):
PocketBase's own start-up then overlaps with pbhost's imports instead of following them.
"""

from __future__ import annotations

import sys


def main() -> None:
    from . import prespawn
    prespawn.fast_start(sys.argv[1:])
    try:
        from .cli import main as cli_main
        cli_main()
    except prespawn.StartupInterrupted:
        sys.exit(0)  # a shutdown signal during start-up: stopping everything is a clean exit
    finally:
        prespawn.discard()  # click refused the options: the PocketBase started early goes


if __name__ == "__main__":
    main()
