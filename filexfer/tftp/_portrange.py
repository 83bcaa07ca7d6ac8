"""Transfer ports from a range (C{--tftp-port-range LOW:HIGH}), for firewalls.

A TFTP server answers each request from a fresh port, the transfer's TID
(RFC 1350); a firewall in front of it must let those ports through, so
operators fix them to a range (tftpd-hpa C{-R LOW:HIGH}, dnsmasq
C{--tftp-port-range}).  L{PortAllocator} hands out numbers of the range
to transfers: it starts at a random place (a TID should be hard to guess,
RFC 1350 section 4) and walks the range once, skipping the numbers its own
transfers hold and those another program has bound.  When every number
was tried it raises L{PortsExhausted} at once, which the server answers
with an ERROR: a full range never makes a client wait for nothing.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TypeVar

import attrs
from twisted.internet.error import CannotListenError

T = TypeVar("T")


class PortsExhausted(Exception):
    """Every port of the range is in use; C{str()} is one line for the log and the ERROR."""


@attrs.frozen
class PortRange:
    """Ports C{low} to C{high}, both included (1-65535)."""

    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> PortRange:
        """C{LOW:HIGH} (tftpd-hpa's form; C{LOW-HIGH} is taken too).

        @raise ValueError: not two numbers, out of 1-65535, or LOW > HIGH.
        """
        low_text, sep, high_text = text.replace("-", ":", 1).partition(":")
        numbers = (low_text.strip(), high_text.strip())
        if not sep or not all(n.isascii() and n.isdigit() for n in numbers):
            raise ValueError(f"expected LOW:HIGH (e.g. 40000:40099), not {text!r}")
        low, high = int(numbers[0]), int(numbers[1])
        if not (1 <= low <= 65535 and 1 <= high <= 65535):
            raise ValueError(f"ports are 1-65535, not {text!r}")
        if low > high:
            raise ValueError(f"the first port is above the last in {text!r}")
        return cls(low, high)

    def __len__(self) -> int:
        return self.high - self.low + 1

    def __str__(self) -> str:
        return f"{self.low}:{self.high}"


class PortAllocator:
    """Open transfer ports within a L{PortRange}; bounded: each number is tried once.

    @param ports: the range.
    @param rng: where a walk starts (injectable for tests).
    """

    def __init__(self, ports: PortRange, rng: random.Random | None = None) -> None:
        self.ports = ports
        self.in_use: set[int] = set()
        self._rng = rng if rng is not None else random.SystemRandom()

    def open(self, bind: Callable[[int], T]) -> tuple[int, T]:
        """Call C{bind(number)} for free numbers until one binds; return it and what bind gave.

        A number another program holds (C{bind} raises
        C{CannotListenError}) is skipped; any other exception propagates.

        @raise PortsExhausted: every number is taken.
        """
        size = len(self.ports)
        start = self._rng.randrange(size)
        for step in range(size):
            number = self.ports.low + (start + step) % size
            if number in self.in_use:
                continue
            try:
                bound = bind(number)
            except CannotListenError:
                continue
            self.in_use.add(number)
            return number, bound
        raise PortsExhausted(
            f"all {size} transfer ports ({self.ports}) are in use; try again later"
        )

    def release(self, number: int) -> None:
        """A transfer closed its port: the number is free again."""
        self.in_use.discard(number)
