"""The dev server's settings; defaults are the Go server's."""

from __future__ import annotations

import math
from typing import Any

import attrs

from .._exceptions import ConfigurationError

__all__ = ["DevServerConfig"]


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(f"{attribute.name} must be a positive number, not {value!r}")


def _positive_or_none(
    instance: object, attribute: attrs.Attribute[Any], value: float | None
) -> None:
    if value is not None:
        _positive(instance, attribute, value)


def _non_empty(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if not value:
        raise ConfigurationError(f"{attribute.name} must not be empty")


@attrs.frozen(kw_only=True)
class DevServerConfig:
    """Settings of a :class:`~trio_lkagent.devserver.DevServer`.

    Every timing default is the LiveKit server's (``livekit/livekit``), so a worker
    tested against the dev server meets the same clock as in production.

    Attributes:
        host: Interface to bind (``127.0.0.1``: only this machine).
        port: TCP port; 0 lets the OS choose (read it back from ``server.url``).
        api_key: The API key workers and clients sign their tokens with.
        api_secret: Its secret.
        register_timeout: Seconds a new agent connection has to send
            ``RegisterWorkerRequest`` before the socket is dropped
            (``agent.RegisterTimeout``: 10).
        availability_timeout: Seconds one worker has to answer an
            ``AvailabilityRequest`` (``agent.AssignJobTimeout``: 10).
        job_request_timeout: Seconds a whole job request may take, across every
            worker tried. The Go server makes the request over psrpc with its
            default 3 s client timeout, which bounds the handler too, so in
            practice a worker has about 3 s to answer. None: no overall limit.
        retry_on_availability_timeout: Offer the job to another worker when one
            does not answer in time. Go does not (the request fails); off by default.
        max_frame_size: Largest WebSocket message accepted from a worker, in bytes;
            a larger one closes the connection with 1009
            (``limit.agent_signal_message_size_limit``: 2 MiB).
        ws_ping_interval: Seconds between WebSocket-level pings to each worker
            (``pingFrequency``: 10). None: no pings.
        empty_timeout: Seconds an empty room lives before it is closed
            (``room.empty_timeout``: 300).
        departure_timeout: Seconds a room lives after its last participant left
            (``room.departure_timeout``: 20).
        shutdown_timeout: Upper bound, in seconds, on closing the server: sockets
            still open after it are cut.
        region: ``ServerInfo.region`` sent to workers.
        node_id: ``ServerInfo.node_id``; generated when empty.
        retain_ended: How many ended jobs, and how many disconnected workers, the
            server keeps as records (``server.jobs``, ``server.workers``); the
            oldest go first. None keeps everything (tests that inspect history).
        retain_ended_for: Seconds an ended job or a disconnected worker is kept at
            most. None: no age limit.
        simulate_job_rate: ``SimulateJobRequest`` a worker may send per second
            (the Go server has no limit; a flood would grow the records without
            bound). Requests over the rate are ignored and counted.
        simulate_job_burst: How many may come at once before the rate applies.
    """

    host: str = "127.0.0.1"
    port: int = attrs.field(default=0)
    api_key: str = attrs.field(default="devkey", validator=_non_empty)
    api_secret: str = attrs.field(default="secret", validator=_non_empty)
    register_timeout: float = attrs.field(default=10.0, validator=_positive)
    availability_timeout: float = attrs.field(default=10.0, validator=_positive)
    job_request_timeout: float | None = attrs.field(default=3.0, validator=_positive_or_none)
    retry_on_availability_timeout: bool = False
    max_frame_size: int = attrs.field(default=2 << 20)
    ws_ping_interval: float | None = attrs.field(default=10.0, validator=_positive_or_none)
    empty_timeout: float = attrs.field(default=300.0, validator=_positive)
    departure_timeout: float = attrs.field(default=20.0, validator=_positive)
    shutdown_timeout: float = attrs.field(default=2.0, validator=_positive)
    region: str = ""
    node_id: str = ""
    # -- bounded records: ended jobs kept, the simulated-job rate --
    retain_ended: int | None = 1000
    retain_ended_for: float | None = attrs.field(default=3600.0, validator=_positive_or_none)
    simulate_job_rate: float = attrs.field(default=5.0, validator=_positive)
    simulate_job_burst: int = 20

    @port.validator
    def _check_port(self, attribute: attrs.Attribute[int], value: int) -> None:
        if not 0 <= value <= 65535:
            raise ConfigurationError(f"port must be in 0..65535, not {value!r}")

    @max_frame_size.validator
    def _check_frame_size(self, attribute: attrs.Attribute[int], value: int) -> None:
        if value < 1024:
            raise ConfigurationError(f"max_frame_size must be at least 1024 bytes, not {value!r}")
