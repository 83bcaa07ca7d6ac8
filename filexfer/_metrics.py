"""Prometheus metrics (C{--metrics ENDPOINT}): counters fed by the transfer records.

L{Metrics} is an L{ITransferObserver}: it counts what every
L{TransferRecord} says, in a registry of its own (prometheus_client's
global one stays untouched, so that several services in one process do not
add up).  L{metrics_site} serves that registry at C{/metrics} through
prometheus_client's Twisted resource.

Labels carry only values from small fixed sets (protocol, direction,
outcome, refusal code): never a file name or a peer address, whose number
has no bound.  With C{--workers} the workers send their records to the
first process (L{filexfer._workers}), whose L{Metrics} therefore counts
every process's transfers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from filexfer._records import OUTCOMES, PROTOCOLS, SERVES, ITransferObserver, TransferRecord

DURATION_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
"""Upper bounds (seconds) of the duration histogram: from a small TFTP file to a large upload."""


@implementer(ITransferObserver)
class Metrics:
    """The service's Prometheus metrics, counted from transfer records.

    @ivar registry: the C{CollectorRegistry} the metrics live in.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.transfers = Counter(
            "filexfer_transfers_total",
            "Transfers that ended, by outcome (stored, already_stored, sent, refused, aborted)",
            ["protocol", "direction", "outcome"],
            registry=r,
        )
        self.bytes = Counter(
            "filexfer_bytes_total",
            "Bytes of file data moved (a resumed upload's earlier bytes are not counted again)",
            ["protocol", "direction"],
            registry=r,
        )
        self.active = Gauge(
            "filexfer_active_transfers",
            "Transfers moving bytes now (accepted and not yet ended)",
            ["protocol"],
            registry=r,
        )
        self.duration = Histogram(
            "filexfer_transfer_duration_seconds",
            "Seconds an accepted transfer took, from connection or request to its end",
            ["protocol"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.refusals = Counter(
            "filexfer_refusals_total",
            "Transfers the server refused, by code (403, 408, 413, 422, 503, ...)",
            ["protocol", "code"],
            registry=r,
        )
        self.retransmissions = Counter(
            "filexfer_tftp_retransmissions_total",
            "TFTP datagrams sent again after a timeout",
            registry=r,
        )
        self.options_refused = Counter(
            "filexfer_tftp_options_refused_total",
            "TFTP options a --tftp-quirks rule refused, by option",
            ["option"],
            registry=r,
        )
        self.resumed = Counter(
            "filexfer_resumed_bytes_total",
            "Bytes FX/1 uploads did not send again because they resumed",
            registry=r,
        )
        # Every series an alert may name exists from the start, at zero.
        for protocol in PROTOCOLS:
            self.active.labels(protocol)
            self.duration.labels(protocol)
        for protocol, direction in SERVES:
            self.bytes.labels(protocol, direction)
            for outcome in OUTCOMES:
                self.transfers.labels(protocol, direction, outcome)

    def transfer_started(self, protocol: str, direction: str) -> None:
        self.active.labels(protocol).inc()

    def transfer_ended(self, record: TransferRecord) -> None:
        protocol = record.protocol
        self.transfers.labels(protocol, record.direction, record.outcome).inc()
        self.bytes.labels(protocol, record.direction).inc(record.nbytes)
        if record.accepted:
            self.active.labels(protocol).dec()
            self.duration.labels(protocol).observe(record.seconds)
            self.resumed.inc(record.resumed_offset)
        if record.outcome == "refused" and record.error_code is not None:
            self.refusals.labels(protocol, str(record.error_code)).inc()
        if record.retransmissions:
            self.retransmissions.inc(record.retransmissions)
        for option in record.options_refused:
            self.options_refused.labels(option).inc()


class _QuietSite(Site):
    """A site that writes no access-log line per request (a scrape every few seconds)."""

    def log(self, request: object) -> None:
        pass


def metrics_site(metrics: Metrics) -> Site:
    """A web site serving C{metrics} at C{/metrics} (prometheus_client's Twisted resource).

    The resource renders in the reactor's thread pool (it is a WSGI app).
    """
    from prometheus_client.twisted import MetricsResource  # imports the installed reactor

    root = Resource()
    root.putChild(b"metrics", MetricsResource(metrics.registry))
    site = _QuietSite(root)
    site.noisy = False
    site.displayTracebacks = False
    return site
