"""The C{filexfer} command's first lines: a signal during start-up ends with one line.

Importing Twisted and the command takes a few tenths of a second; a Ctrl-C
or SIGTERM then would otherwise print a traceback (or nothing at all).  The
handlers set here hold until the command sets its own.
"""

from __future__ import annotations

import signal
import sys


def main() -> None:
    """Entry point of the C{filexfer} console script and of C{python -m filexfer}."""
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, interrupted_while_starting)
    from filexfer.cli import main as run_command

    run_command()


def interrupted_while_starting(signum: int, frame: object) -> None:
    """Say so in one line and exit with 128 + the signal's number (130, 143)."""
    name = signal.Signals(signum).name
    sys.stderr.write(f"filexfer: interrupted by {name} while starting; nothing was sent\n")
    raise SystemExit(128 + signum)
