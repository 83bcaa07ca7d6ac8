"""Coverage-guided fuzzing of the TFTP packet decoder (atheris).

    pip install atheris
    python fuzz/fuzz_tftp.py -max_total_time=60

Any datagram must decode, or raise MalformedPacket; nothing else.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from filexfer.tftp import _packets


def test_one_input(data: bytes) -> None:
    """Decode one datagram; re-encode what decodes."""
    try:
        packet = _packets.decode(data)
    except _packets.MalformedPacket:
        return
    _packets.encode(packet)


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
