"""Prometheus pieces both daemons use: the gRPC server metrics and the /metrics endpoint.

The broker's own families are in broker/metrics.py, the worker's in worker/metrics.py.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from .settings import split_host_port

RPC_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
                       30, 60, 300)

class RpcMetrics:
    """gRPC server metrics, named as in go-grpc-prometheus so dashboards carry over."""

    def __init__(self, registry: CollectorRegistry):
        labels = ["grpc_type", "grpc_service", "grpc_method"]
        self._started = Counter("grpc_server_started", "RPCs started on the server.", labels,
                                registry=registry)
        self._handled = Counter("grpc_server_handled",
                                "RPCs completed on the server, by status code.",
                                [*labels, "grpc_code"], registry=registry)
        self._seconds = Histogram("grpc_server_handling_seconds",
                                  "Time from the start of an RPC to its status (streams: "
                                  "the whole stream).", labels, buckets=RPC_SECONDS_BUCKETS,
                                  registry=registry)
        self._in_flight = Gauge("grpc_server_in_flight", "RPCs running now.", labels,
                                registry=registry)
        self._by_method: dict[tuple[str, str, str], tuple] = {}
        self._by_code: dict[tuple[str, str, str, str], Counter] = {}

    @property
    def label_sets(self) -> int:
        """Label combinations of grpc_server_handled so far (methods x codes seen)."""
        return len(self._handled._metrics)  # noqa: SLF001 - prometheus_client keeps no count

    def started(self, kind: str, service: str, method: str) -> None:
        started, in_flight, _ = self._children(kind, service, method)
        started.inc()
        in_flight.inc()

    def handled(self, kind: str, service: str, method: str, code: str, seconds: float) -> None:
        _, in_flight, timed = self._children(kind, service, method)
        in_flight.dec()
        handled = self._by_code.get((kind, service, method, code))
        if handled is None:
            handled = self._by_code[kind, service, method, code] = self._handled.labels(
                kind, service, method, code)
        handled.inc()
        timed.observe(seconds)

    def _children(self, kind: str, service: str, method: str) -> tuple:
        """The labelled children of one method, looked up once (`labels` costs a few
        microseconds a call; these are bounded by the methods served)."""
        key = (kind, service, method)
        children = self._by_method.get(key)
        if children is None:
            children = self._by_method[key] = (self._started.labels(*key),
                                               self._in_flight.labels(*key),
                                               self._seconds.labels(*key))
        return children


class MetricsServer:
    """GET /metrics over HTTP on `listen` (host:port; port 0 picks a free one)."""

    def __init__(self, registry: CollectorRegistry, listen: str):
        host, port = split_host_port(listen)
        try:
            self._server, self._thread = start_http_server(port, host, registry)
        except OSError as error:
            raise MetricsListenError(
                f"cannot serve metrics on {listen}: {error.strerror or error}; set "
                "metrics.listen to another address, or to \"\" to turn the endpoint off"
            ) from None
        self.port = self._server.server_port
        self.url = f"http://{listen.rpartition(':')[0]}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class MetricsListenError(Exception):
    pass
