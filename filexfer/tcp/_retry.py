"""Trying a busy server (503) again: jittered exponential backoff within a deadline."""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from filexfer._receipt import Receipt
from filexfer.tcp._errors import ServerRefused

RETRY_DEADLINE = 60.0
"""Seconds L{send_file} keeps retrying a busy server by default."""
_FIRST_WAIT = 1.0
_MIN_WAIT = 0.1
_MAX_WAIT = 30.0


def retry_wait(retry: int, hint: float | None, jitter: float) -> float:
    """Seconds to wait before retry number C{retry} (0 for the first) of a busy server.

    The wait doubles from the server's hint (1 s without one) up to 30 s,
    is never shorter than the hint, and is stretched by C{1 + jitter}
    (0 <= jitter < 1) so that clients turned away together come back apart.
    """
    base = _FIRST_WAIT if hint is None else max(hint, _MIN_WAIT)
    wait = max(min(_MAX_WAIT, base * 2 ** min(retry, 32)), base)
    return float(wait * (1 + jitter))


async def retry_while_busy(
    clock: IReactorTime,
    attempt: Callable[[], Deferred[Receipt]],
    deadline: float,
    jitter: Callable[[], float],
    on_retry: Callable[[ServerRefused, float], None] | None,
) -> Receipt:
    give_up_at = clock.seconds() + deadline
    retry = 0
    while True:
        try:
            return await attempt()
        except ServerRefused as refusal:
            remaining = give_up_at - clock.seconds()
            if refusal.code != 503 or remaining <= 0:
                raise
            wait = min(retry_wait(retry, refusal.retry_after, jitter()), remaining)
            if on_retry is not None:
                on_retry(refusal, wait)
            await deferLater(clock, wait)
            retry += 1
