"""`python -m pbhost` and the `pbhost` console script.

`pbhost serve` starts PocketBase before importing click, asyncio and the rest (see
startup/prespawn.py): PocketBase's own start-up then overlaps with pbhost's imports instead of
following them.
"""

from __future__ import annotations

import sys


def main() -> None:
    from pbhost.startup import prespawn
    prespawn.fast_start(sys.argv[1:])
    try:
        from pbhost.cli.commands import main as cli_main
        cli_main()
    except prespawn.StartupInterrupted:
        # A shutdown signal during start-up: stopping everything is a clean exit, 130 if a
        # second Ctrl-C forced it meanwhile (process/host.py EXIT_FORCED, not imported yet).
        prespawn.discard()  # first, so that a Ctrl-C during this stop counts
        sys.exit(130 if prespawn.forced() else 0)
    finally:
        prespawn.discard()  # click refused the options: the PocketBase started early goes


if __name__ == "__main__":
    main()
