"""Running a worker as a service: settings from ``LIVEKIT_*`` variables and flags.

:class:`ServiceConfig` is what the ``trio-lkagent`` command line runs a worker
with. Every setting has an environment variable and a command-line flag (the
flag wins); :data:`SERVICE_SETTINGS` is the one table of them, so the CLI, its
help text and ``docs/cli.md`` cannot disagree.

``WorkerOptions()`` itself still reads only ``LIVEKIT_URL``, ``LIVEKIT_API_KEY``
and ``LIVEKIT_API_SECRET``; :meth:`ServiceConfig.worker_options` builds options
from the whole table.
"""

from __future__ import annotations

import contextlib
import math
import os
import urllib.parse
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import attrs

from ._exceptions import ConfigurationError
from ._options import ReconnectPolicy, WorkerOptions

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "SERVICE_SETTINGS",
    "ServiceConfig",
    "Setting",
    "load_config_from_env",
    "parse_setting",
    "validate_config",
]

#: LiveKit's ``--dev`` key pair (the dev server's defaults). The secret is shorter
#: than the 32 bytes PyJWT asks of HS256 keys, by convention: signing with it does
#: not warn (:func:`dev_keys_quiet`).
DEV_API_KEY = "devkey"
DEV_API_SECRET = "secret"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LOG_FORMATS = ("text", "json")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@contextlib.contextmanager
def dev_keys_quiet(secret: str) -> Iterator[None]:
    """Silence PyJWT's ``InsecureKeyLengthWarning`` while signing with the dev
    convention's secret (only that one: a short production key still warns).

    Not thread-safe (``warnings.catch_warnings``): use it on the thread that signs.
    """
    if secret != DEV_API_SECRET:
        yield
        return
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The HMAC key is")
        yield


def ignore_dev_key_warnings() -> None:
    """For a CLI process that signs with the dev secret on other threads too:
    ignore PyJWT's key-length warning process-wide."""
    warnings.filterwarnings("ignore", message="The HMAC key is")


# -- value parsers: raise ValueError, the caller names the setting -----------------


def parse_text(raw: str) -> str:
    """Any string, surrounding whitespace removed."""
    return raw.strip()


def parse_url(raw: str) -> str:
    """A ``ws[s]://`` or ``http[s]://`` URL with a host."""
    value = raw.strip()
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise ValueError(value)
    return value


def parse_bool(raw: str) -> bool:
    """1/0, true/false, yes/no, on/off (any case)."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(raw)


def parse_positive_int(raw: str) -> int:
    """A whole number >= 1."""
    value = int(raw.strip(), 10)
    if value < 1:
        raise ValueError(raw)
    return value


def parse_positive_float(raw: str) -> float:
    """A finite number > 0."""
    value = float(raw.strip())
    if not (math.isfinite(value) and value > 0):
        raise ValueError(raw)
    return value


def parse_port(raw: str) -> int:
    """A TCP port, 0..65535 (0: the OS chooses)."""
    value = int(raw.strip(), 10)
    if not 0 <= value <= 65535:
        raise ValueError(raw)
    return value


def parse_port_or_off(raw: str) -> int | None:
    """A TCP port, or ``off`` (None)."""
    if raw.strip().lower() in ("off", "none", "disabled"):
        return None
    return parse_port(raw)


def parse_log_level(raw: str) -> str:
    """A ``logging`` level name, any case."""
    value = raw.strip().upper()
    if value not in LOG_LEVELS:
        raise ValueError(raw)
    return value


def parse_log_format(raw: str) -> str:
    """``text`` or ``json``."""
    value = raw.strip().lower()
    if value not in LOG_FORMATS:
        raise ValueError(raw)
    return value


@attrs.frozen
class Setting:
    """One setting: its attribute, environment variable, flag, parser and help."""

    attr: str
    env: str
    flag: str
    parse: Callable[[str], Any]
    #: What is accepted, for the error message: "an integer >= 1".
    accepted: str
    help: str
    #: The flag takes no value; it stands for this raw value (``--ws-debug``: "true").
    const: str | None = None


#: The settings of ``trio-lkagent start`` (and of the worker ``dev`` runs).
SERVICE_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "url",
        "LIVEKIT_URL",
        "--url",
        parse_url,
        "a ws[s]:// or http[s]:// URL with a host",
        "LiveKit server URL",
    ),
    Setting("api_key", "LIVEKIT_API_KEY", "--api-key", parse_text, "any text", "API key"),
    Setting(
        "api_secret", "LIVEKIT_API_SECRET", "--api-secret", parse_text, "any text", "API secret"
    ),
    Setting(
        "agent_name",
        "LIVEKIT_AGENT_NAME",
        "--agent-name",
        parse_text,
        "any text",
        "agent name for explicit dispatch (empty: automatic dispatch)",
    ),
    Setting(
        "namespace", "LIVEKIT_NAMESPACE", "--namespace", parse_text, "any text", "worker namespace"
    ),
    Setting(
        "max_concurrent_jobs",
        "LIVEKIT_MAX_CONCURRENT_JOBS",
        "--max-concurrent-jobs",
        parse_positive_int,
        "an integer >= 1",
        "cap on running + reserved jobs per worker process (default 100)",
    ),
    Setting(
        "drain_timeout",
        "LIVEKIT_DRAIN_TIMEOUT",
        "--drain-timeout",
        parse_positive_float,
        "a number of seconds > 0",
        "on SIGTERM, wait this long for running jobs before cancelling them (default 1800)",
    ),
    Setting(
        "log_level",
        "LIVEKIT_LOG_LEVEL",
        "--log-level",
        parse_log_level,
        "one of " + ", ".join(LOG_LEVELS),
        "log level (default INFO)",
    ),
    Setting(
        "log_format",
        "LIVEKIT_LOG_FORMAT",
        "--log-format",
        parse_log_format,
        "text or json",
        "log record format on stderr (default text)",
    ),
    Setting(
        "recovery_enabled",
        "LIVEKIT_RECOVERY_ENABLED",
        "--recovery",
        parse_bool,
        "one of 1, 0, true, false, yes, no, on, off",
        "reconnect after losing the server and restart crashed worker processes (default on);"
        " set explicitly to true, also retry failed jobs (DefaultRecoveryHandler)",
    ),
    Setting(
        "websocket_debug",
        "LIVEKIT_WEBSOCKET_DEBUG",
        "--ws-debug",
        parse_bool,
        "one of 1, 0, true, false, yes, no, on, off",
        "log every agent-protocol message (tokens redacted)",
        const="true",
    ),
    Setting(
        "health_host",
        "LIVEKIT_HEALTH_HOST",
        "--health-host",
        parse_text,
        "a host name or address",
        "interface of the health/metrics server (default 127.0.0.1)",
    ),
    Setting(
        "health_port",
        "LIVEKIT_HEALTH_PORT",
        "--health-port",
        parse_port_or_off,
        "a port 0..65535 or off",
        "port of the health/metrics server; 0: any free port; off: none (default 8081)",
    ),
    Setting(
        "processes",
        "LIVEKIT_PROCESSES",
        "--processes",
        parse_positive_int,
        "an integer >= 1",
        "supervised worker processes to run (default 1)",
    ),
)

_BY_ATTR = {s.attr: s for s in SERVICE_SETTINGS}


def parse_setting(setting: Setting, raw: str, source: str) -> Any:
    """Parse *raw* for *setting*; *source* names where it came from in the error.

    Raises:
        ConfigurationError: ``"<source>='<raw>' is not valid: expected <accepted>"``.
    """
    try:
        return setting.parse(raw)
    except ValueError:
        raise ConfigurationError(
            f"{source}={raw!r} is not valid: expected {setting.accepted}"
        ) from None


@attrs.frozen(kw_only=True)
class ServiceConfig:
    """The settings a worker service runs with (see :data:`SERVICE_SETTINGS`).

    Build it with :func:`load_config_from_env` and check it with
    :func:`validate_config`; :meth:`worker_options` turns it into
    :class:`~trio_lkagent.WorkerOptions`.

    Attributes:
        explicit: Names of the attributes that were set (by a variable or a
            flag) rather than left at their defaults.
    """

    url: str = ""
    api_key: str = ""
    api_secret: str = attrs.field(default="", repr=False)
    agent_name: str = ""
    namespace: str = ""
    max_concurrent_jobs: int | None = None
    drain_timeout: float | None = None
    log_level: str = "INFO"
    log_format: str = "text"
    recovery_enabled: bool = True
    websocket_debug: bool = False
    health_host: str = "127.0.0.1"
    health_port: int | None = 8081
    processes: int = 1
    explicit: frozenset[str] = attrs.field(factory=frozenset, eq=False)

    def with_values(self, raw: Mapping[str, str], *, from_flags: bool = True) -> ServiceConfig:
        """A copy with settings replaced by raw strings, parsed as their setting says.

        Args:
            raw: Attribute name -> raw text (as typed on the command line).
            from_flags: Name the flag (True) or the variable in errors.

        Raises:
            ConfigurationError: a value does not parse; the message names the flag.
        """
        values: dict[str, Any] = {}
        for attr, text in raw.items():
            setting = _BY_ATTR[attr]
            values[attr] = parse_setting(setting, text, setting.flag if from_flags else setting.env)
        return attrs.evolve(self, **values, explicit=self.explicit | frozenset(values))

    def worker_options(self, **overrides: Any) -> WorkerOptions:
        """``WorkerOptions`` from these settings (plus *overrides*).

        Raises:
            ConfigurationError: the options are invalid (missing URL or keys).
        """
        kwargs: dict[str, Any] = {
            field: getattr(self, attr)
            for attr, field in _OPTION_FIELDS
            if getattr(self, attr) is not None
        }
        if not self.recovery_enabled:
            kwargs["reconnect"] = ReconnectPolicy(max_attempts=1)
        kwargs.update(_recovery_changes(self, None))
        kwargs.update(overrides)
        return WorkerOptions(**kwargs)

    def apply_to(self, options: WorkerOptions) -> WorkerOptions:
        """*options* with the settings that were set explicitly put over them.

        Raises:
            ConfigurationError: the result is invalid.
        """
        changes: dict[str, Any] = {}
        for attr, field in _OPTION_FIELDS:
            if attr in self.explicit:
                changes[field] = getattr(self, attr)
        if "recovery_enabled" in self.explicit and not self.recovery_enabled:
            changes["reconnect"] = attrs.evolve(options.reconnect, max_attempts=1)
        changes.update(_recovery_changes(self, options))
        return attrs.evolve(options, **changes) if changes else options


def _recovery_changes(config: ServiceConfig, options: WorkerOptions | None) -> dict[str, Any]:
    """Job recovery from ``LIVEKIT_RECOVERY_ENABLED`` (docs/resilience.md).

    Unset: the application's ``WorkerOptions.recovery`` stands (default: no job
    retries). Explicitly true: ``DefaultRecoveryHandler()`` unless the
    application gave a handler. Explicitly false: no job retries (and, as
    always, no reconnects and no process restarts).
    """
    if "recovery_enabled" not in config.explicit:
        return {}
    if not config.recovery_enabled:
        return {"recovery": None}
    if options is not None and options.recovery is not None:
        return {}
    from .resilience import DefaultRecoveryHandler

    return {"recovery": DefaultRecoveryHandler()}


#: ServiceConfig attribute -> WorkerOptions field, where a value carries over as is.
_OPTION_FIELDS = (
    ("url", "url"),
    ("api_key", "api_key"),
    ("api_secret", "api_secret"),
    ("agent_name", "agent_name"),
    ("namespace", "namespace"),
    ("websocket_debug", "websocket_debug"),
    ("max_concurrent_jobs", "max_jobs"),
    ("drain_timeout", "drain_timeout"),
)


def load_config_from_env(environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read every ``LIVEKIT_*`` setting of :data:`SERVICE_SETTINGS` from the environment.

    Unset or empty variables keep their defaults. Nothing is required here (the
    URL and keys may still come from flags); :func:`validate_config` checks that.

    Args:
        environ: The variables (default ``os.environ``).

    Returns:
        The configuration; ``explicit`` lists what was set.

    Raises:
        ConfigurationError: a variable has a value that does not parse, e.g.
            ``LIVEKIT_MAX_CONCURRENT_JOBS='abc' is not valid: expected an integer >= 1``.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for setting in SERVICE_SETTINGS:
        raw = env.get(setting.env, "")
        if raw.strip():
            values[setting.attr] = parse_setting(setting, raw, setting.env)
    return ServiceConfig(**values, explicit=frozenset(values))


def validate_config(config: ServiceConfig, *, require: Iterable[str] | None = None) -> None:
    """Check that *config* can run a worker; the error names the variable and the flag.

    Args:
        config: The configuration.
        require: Attributes that must be non-empty (default: ``url``,
            ``api_key``, ``api_secret``).

    Raises:
        ConfigurationError: a required setting is missing, or settings conflict.
    """
    for attr in ("url", "api_key", "api_secret") if require is None else require:
        if not getattr(config, attr):
            setting = _BY_ATTR[attr]
            example = " (for example ws://127.0.0.1:7880)" if attr == "url" else ""
            raise ConfigurationError(
                f"{setting.env} is not set: set it or pass {setting.flag}{example}"
            )
    if config.url:
        parse_setting(_BY_ATTR["url"], config.url, "LIVEKIT_URL")
    if (
        config.processes > 1
        and config.health_port is not None
        and config.health_port > 0
        and config.health_port + config.processes - 1 > 65535
    ):
        raise ConfigurationError(
            f"LIVEKIT_HEALTH_PORT={config.health_port} leaves no room for"
            f" {config.processes} processes (each takes the next port)"
        )
