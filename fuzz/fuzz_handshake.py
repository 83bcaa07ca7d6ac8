"""Coverage-guided fuzzing of the FX/1 handshake parser and the classic-name check (atheris).

    pip install atheris
    python fuzz/fuzz_handshake.py -max_total_time=60        # a short run
    python fuzz/fuzz_handshake.py -max_total_time=3600 corpus/handshake   # a campaign

Any input must give a clean parse or a clean TransferError; anything else
is a crash that atheris reports with the input that caused it.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from filexfer._errors import TransferError
    from filexfer.tcp import _wire


def test_one_input(data: bytes) -> None:
    """Feed one input to every parser of the TCP handshake."""
    try:
        _wire.parse_header_block(data)
    except TransferError:
        pass
    try:
        _wire.parse_classic(data)
    except TransferError:
        pass
    try:
        _wire.parse_reply(data)
    except ValueError:
        pass
    _wire.classify(data)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
