"""Service settings from LIVEKIT_* variables: parsing, errors that name the variable."""

from __future__ import annotations

import pytest

from trio_lkagent import (
    ConfigurationError,
    ReconnectPolicy,
    WorkerOptions,
    load_config_from_env,
    validate_config,
)
from trio_lkagent._config import SERVICE_SETTINGS

FULL_ENV = {
    "LIVEKIT_URL": "ws://127.0.0.1:7880",
    "LIVEKIT_API_KEY": "key",
    "LIVEKIT_API_SECRET": "secret-0123456789abcdef0123456789abcdef",
    "LIVEKIT_AGENT_NAME": " echo ",
    "LIVEKIT_NAMESPACE": "ns",
    "LIVEKIT_MAX_CONCURRENT_JOBS": "7",
    "LIVEKIT_DRAIN_TIMEOUT": "12.5",
    "LIVEKIT_LOG_LEVEL": "debug",
    "LIVEKIT_LOG_FORMAT": "JSON",
    "LIVEKIT_RECOVERY_ENABLED": "off",
    "LIVEKIT_WEBSOCKET_DEBUG": "yes",
    "LIVEKIT_HEALTH_HOST": "0.0.0.0",
    "LIVEKIT_HEALTH_PORT": "off",
    "LIVEKIT_PROCESSES": "3",
}


def test_every_setting_is_read_and_parsed() -> None:
    config = load_config_from_env(FULL_ENV)
    assert config.url == "ws://127.0.0.1:7880"
    assert (config.agent_name, config.namespace) == ("echo", "ns")
    assert (config.max_concurrent_jobs, config.drain_timeout) == (7, 12.5)
    assert (config.log_level, config.log_format) == ("DEBUG", "json")
    assert (config.recovery_enabled, config.websocket_debug) == (False, True)
    assert (config.health_host, config.health_port, config.processes) == ("0.0.0.0", None, 3)
    assert config.explicit == {s.attr for s in SERVICE_SETTINGS}
    validate_config(config)


def test_unset_and_empty_variables_keep_the_defaults() -> None:
    config = load_config_from_env({"LIVEKIT_AGENT_NAME": "", "LIVEKIT_LOG_LEVEL": "  "})
    assert config.explicit == frozenset()
    assert (config.log_level, config.health_port, config.processes) == ("INFO", 8081, 1)
    assert config.recovery_enabled and not config.websocket_debug


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("LIVEKIT_URL", "ftp://example.com", "a ws[s]:// or http[s]:// URL with a host"),
        ("LIVEKIT_MAX_CONCURRENT_JOBS", "abc", "an integer >= 1"),
        ("LIVEKIT_MAX_CONCURRENT_JOBS", "0", "an integer >= 1"),
        ("LIVEKIT_DRAIN_TIMEOUT", "-1", "a number of seconds > 0"),
        ("LIVEKIT_DRAIN_TIMEOUT", "nan", "a number of seconds > 0"),
        ("LIVEKIT_LOG_LEVEL", "loud", "one of DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("LIVEKIT_LOG_FORMAT", "xml", "text or json"),
        ("LIVEKIT_RECOVERY_ENABLED", "maybe", "one of 1, 0, true, false, yes, no, on, off"),
        ("LIVEKIT_WEBSOCKET_DEBUG", "2", "one of 1, 0, true, false, yes, no, on, off"),
        ("LIVEKIT_HEALTH_PORT", "65536", "a port 0..65535 or off"),
        ("LIVEKIT_PROCESSES", "two", "an integer >= 1"),
    ],
)
def test_invalid_values_name_the_variable_and_what_it_accepts(
    variable: str, value: str, accepted: str
) -> None:
    with pytest.raises(ConfigurationError) as exc_info:
        load_config_from_env({variable: value})
    assert str(exc_info.value) == f"{variable}={value!r} is not valid: expected {accepted}"


def test_validate_names_the_missing_variable_and_its_flag() -> None:
    config = load_config_from_env({"LIVEKIT_URL": "ws://h:1", "LIVEKIT_API_KEY": "k"})
    with pytest.raises(ConfigurationError, match=r"LIVEKIT_API_SECRET is not set.*--api-secret"):
        validate_config(config)
    validate_config(config, require=("url",))


def test_flags_override_variables_and_name_the_flag_when_invalid() -> None:
    config = load_config_from_env({"LIVEKIT_MAX_CONCURRENT_JOBS": "5"})
    assert config.with_values({"max_concurrent_jobs": "9"}).max_concurrent_jobs == 9
    with pytest.raises(ConfigurationError, match=r"--max-concurrent-jobs='x' is not valid"):
        config.with_values({"max_concurrent_jobs": "x"})


def test_worker_options_from_the_settings() -> None:
    options = load_config_from_env(FULL_ENV).worker_options()
    assert (options.agent_name, options.namespace, options.max_jobs) == ("echo", "ns", 7)
    assert options.drain_timeout == 12.5 and options.websocket_debug
    assert options.reconnect.max_attempts == 1  # recovery off: the first failure is final


def test_explicit_settings_go_over_a_workers_own_options() -> None:
    own = WorkerOptions(
        url="ws://own:1",
        api_key="own",
        api_secret="own-secret",
        agent_name="own-name",
        max_jobs=3,
        reconnect=ReconnectPolicy(initial_delay=2),
    )
    config = load_config_from_env({"LIVEKIT_NAMESPACE": "ns", "LIVEKIT_RECOVERY_ENABLED": "0"})
    merged = config.apply_to(own)
    assert (merged.url, merged.agent_name, merged.max_jobs) == ("ws://own:1", "own-name", 3)
    assert merged.namespace == "ns"
    assert merged.reconnect == ReconnectPolicy(initial_delay=2, max_attempts=1)
    assert load_config_from_env({}).apply_to(own) is own
