"""The ``trio-lkagent`` command line (also ``python -m trio_lkagent``).

Commands: ``start`` (a worker against a real server, optionally several
supervised processes), ``dev`` (worker + in-process dev server + a simulated
participant), ``devserver`` (the dev server alone) and ``dispatch`` (create an
agent dispatch on any server through ``livekit-api``).

Every flag has an environment twin (``docs/cli.md``); flags win. An invalid
value ends the program with one line on stderr naming the flag or variable and
what it accepts, and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

import attrs
import trio

from ._config import (
    DEV_API_SECRET,
    SERVICE_SETTINGS,
    ServiceConfig,
    Setting,
    ignore_dev_key_warnings,
    load_config_from_env,
    parse_bool,
    parse_port,
    parse_positive_float,
    parse_positive_int,
    parse_setting,
    parse_text,
    parse_url,
    validate_config,
)
from ._exceptions import ConfigurationError, LKAgentError
from ._logging import configure_logging
from ._worker import Worker

__all__ = ["main", "run_app"]

PROG = "trio-lkagent"
#: Attributes looked up, in order, when the target names none.
DEFAULT_ATTRS = ("worker", "entrypoint")

_TARGET_HELP = (
    "path/to/file.py[:attr] or package.module:attr; attr is a Worker or an async"
    " entrypoint function (default: `worker`, then `entrypoint`)"
)


class UsageError(Exception):
    """A problem the user can fix from the command line: one line, exit 2."""


# -- settings of the commands other than the worker's ------------------------------


def parse_job_type(raw: str) -> str:
    """``room``, ``publisher`` or ``participant``."""
    value = raw.strip().lower()
    if value not in ("room", "publisher", "participant"):
        raise ValueError(raw)
    return value


def parse_json_text(raw: str) -> str:
    """Any text; JSON is checked to parse when it looks like JSON."""
    import json

    if raw.strip().startswith(("{", "[")):
        json.loads(raw)
    return raw


def parse_py_file(raw: str) -> str:
    """An existing ``.py`` file."""
    path = Path(raw.strip())
    if path.suffix != ".py" or not path.is_file():
        raise ValueError(raw)
    return str(path)


_DEV_SETTINGS = (
    Setting("host", "LIVEKIT_DEV_HOST", "--host", parse_text, "a host", "dev server interface"),
    Setting(
        "port",
        "LIVEKIT_DEV_PORT",
        "--port",
        parse_port,
        "a port 0..65535",
        "dev server port (default 0: any free port)",
    ),
    Setting(
        "room",
        "LIVEKIT_DEV_ROOM",
        "--room",
        parse_text,
        "a room name",
        "room to create (default dev-room)",
    ),
    Setting(
        "duration",
        "LIVEKIT_DEV_DURATION",
        "--duration",
        parse_positive_float,
        "a number of seconds > 0",
        "stop this many seconds after the participants joined (default: when every job"
        " ended, or at Ctrl-C)",
    ),
    Setting(
        "job_type",
        "LIVEKIT_DEV_JOB_TYPE",
        "--job-type",
        parse_job_type,
        "room, publisher or participant",
        "the worker's job type (default: the worker's own, room)",
    ),
    Setting(
        "metadata",
        "LIVEKIT_DEV_METADATA",
        "--metadata",
        parse_json_text,
        "text (valid JSON if it starts with { or [)",
        "job metadata of the dispatch (ctx.job.metadata)",
    ),
    Setting(
        "participants",
        "LIVEKIT_DEV_PARTICIPANTS",
        "--participants",
        parse_positive_int,
        "an integer >= 1",
        "simulated participants of the built-in scenario (default 1)",
    ),
    Setting(
        "scenario",
        "LIVEKIT_DEV_SCENARIO",
        "--scenario",
        parse_py_file,
        "an existing .py file",
        "FILE.py defining `async def scenario(dev)`, run instead of the built-in"
        " tone-and-chat script (docs/cli.md)",
    ),
    Setting(
        "url",
        "LIVEKIT_DEV_URL",
        "--url",
        parse_url,
        "a ws[s]:// or http[s]:// URL with a host",
        "an external LiveKit server instead of the embedded one (keys: --api-key,"
        " --api-secret or LIVEKIT_API_KEY, LIVEKIT_API_SECRET)",
    ),
    Setting(
        "reload",
        "LIVEKIT_DEV_RELOAD",
        "--reload",
        parse_bool,
        "one of 1, 0, true, false, yes, no, on, off",
        "restart when a .py file under the agent's directory changes (needs watchfiles)",
        const="true",
    ),
)
_DEVSERVER_SETTINGS = (
    Setting("host", "LIVEKIT_DEVSERVER_HOST", "--host", parse_text, "a host", "interface to bind"),
    Setting(
        "port",
        "LIVEKIT_DEVSERVER_PORT",
        "--port",
        parse_port,
        "a port 0..65535",
        "port to bind (default 7880; 0: any free port)",
    ),
    Setting("api_key", "LIVEKIT_API_KEY", "--api-key", parse_text, "any text", "API key"),
    Setting(
        "api_secret", "LIVEKIT_API_SECRET", "--api-secret", parse_text, "any text", "API secret"
    ),
)
_DISPATCH_SETTINGS = (
    Setting("room", "LIVEKIT_ROOM", "--room", parse_text, "a room name", "room to dispatch to"),
    Setting(
        "metadata",
        "LIVEKIT_DISPATCH_METADATA",
        "--metadata",
        parse_text,
        "any text",
        "job metadata",
    ),
)
_SERVICE = {s.attr: s for s in SERVICE_SETTINGS}
#: Service settings whose default differs under ``dev``: their help says so.
_DEV_DEFAULTS = {
    "health_port": attrs.evolve(
        _SERVICE["health_port"],
        help="port of the health/metrics server; off: none (default 0 under dev: any free port)",
    ),
    "log_level": attrs.evolve(
        _SERVICE["log_level"], help="log level (default WARNING under dev; its own lines always)"
    ),
}
_LOGGING_ATTRS = ("log_level", "log_format")
_CONNECTION_ATTRS = ("url", "api_key", "api_secret")


_METAVARS = {
    "agent_name": "NAME",
    "max_concurrent_jobs": "N",
    "processes": "N",
    "drain_timeout": "SECONDS",
    "duration": "SECONDS",
    "log_level": "LEVEL",
    "log_format": "{text,json}",
    "health_host": "HOST",
    "health_port": "PORT",
    "job_type": "{room,publisher,participant}",
    "metadata": "TEXT",
    "participants": "N",
    "scenario": "FILE.py",
    "url": "URL",
}


def _add_setting(parser: argparse.ArgumentParser, setting: Setting) -> None:
    help_text = f"{setting.help} [env {setting.env}]"
    if setting.attr == "recovery_enabled":
        parser.add_argument(
            "--recovery", dest=setting.attr, action="store_const", const="true", help=help_text
        )
        parser.add_argument(
            "--no-recovery",
            dest=setting.attr,
            action="store_const",
            const="false",
            help="turn recovery off: a lost server or a crashed process ends it",
        )
    elif setting.const is not None:
        parser.add_argument(
            setting.flag,
            dest=setting.attr,
            action="store_const",
            const=setting.const,
            help=help_text,
        )
    else:
        metavar = _METAVARS.get(setting.attr, setting.attr.upper().removeprefix("API_"))
        parser.add_argument(setting.flag, dest=setting.attr, metavar=metavar, help=help_text)


def _build_parser(*, prog: str = PROG, with_target: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Run trio-lkagent workers like a service (see docs/cli.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    start = commands.add_parser(
        "start", help="run a worker against a LiveKit server", description="Run a worker."
    )
    if with_target:
        start.add_argument("target", metavar="TARGET", help=_TARGET_HELP)
    for setting in SERVICE_SETTINGS:
        _add_setting(start, setting)

    dev = commands.add_parser(
        "dev",
        help="run a worker against an in-process dev server, with a simulated participant",
        description="Start the local LiveKit server, the worker, a room with a dispatch for"
        " the agent, and a participant that publishes a tone and sends data messages.",
    )
    if with_target:
        dev.add_argument("target", metavar="TARGET", help=_TARGET_HELP)
    for setting in _DEV_SETTINGS:
        _add_setting(dev, setting)
    for setting in SERVICE_SETTINGS:
        if setting.attr not in ("url", "processes", "health_host"):
            _add_setting(dev, _DEV_DEFAULTS.get(setting.attr, setting))

    devserver = commands.add_parser(
        "devserver",
        help="run the in-package LiveKit dev server",
        description="Run the local LiveKit dev server until Ctrl-C.",
    )
    for setting in _DEVSERVER_SETTINGS:
        _add_setting(devserver, setting)
    for attr in _LOGGING_ATTRS:
        _add_setting(devserver, _SERVICE[attr])

    dispatch = commands.add_parser(
        "dispatch",
        help="dispatch an agent to a room (any LiveKit server)",
        description="Create an agent dispatch through the server API (livekit-api).",
    )
    for setting in _DISPATCH_SETTINGS:
        _add_setting(dispatch, setting)
    for attr in (*_CONNECTION_ATTRS, "agent_name", *_LOGGING_ATTRS):
        _add_setting(dispatch, _SERVICE[attr])
    return parser


def _service_config(args: argparse.Namespace, *, ignore: Sequence[str] = ()) -> ServiceConfig:
    """Environment first (every variable is checked, but *ignore*), then the flags given."""
    skipped = {_SERVICE[attr].env for attr in ignore}
    config = load_config_from_env({k: v for k, v in os.environ.items() if k not in skipped})
    flags = {
        s.attr: value
        for s in SERVICE_SETTINGS
        if (value := getattr(args, s.attr, None)) is not None
    }
    return config.with_values(flags)


def _extra(
    settings: Sequence[Setting], args: argparse.Namespace, defaults: dict[str, Any]
) -> dict[str, Any]:
    values = dict(defaults)
    for setting in settings:
        raw_env = os.environ.get(setting.env, "")
        if raw_env.strip():
            values[setting.attr] = parse_setting(setting, raw_env, setting.env)
    for setting in settings:
        raw_flag = getattr(args, setting.attr, None)
        if raw_flag is not None:
            values[setting.attr] = parse_setting(setting, raw_flag, setting.flag)
    return values


# -- the target ------------------------------------------------------------------


def _import_target(spec: str) -> tuple[ModuleType, str]:
    """Import the module part of *spec*; returns it and the attribute part."""
    module_part, sep, attr = spec.rpartition(":")
    if not sep:
        module_part, attr = spec, ""
    if not module_part:
        raise UsageError(f"invalid target {spec!r}: expected FILE.py[:attr] or module:attr")
    looks_like_file = module_part.endswith(".py") or "/" in module_part or os.sep in module_part
    if looks_like_file:
        path = Path(module_part).resolve()
        if not path.is_file():
            raise UsageError(f"target file {module_part!r} does not exist")
        name = path.stem
        existing = sys.modules.get(name)
        if existing is not None and getattr(existing, "__file__", None) != str(path):
            name = f"_trio_lkagent_target_{name}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise UsageError(f"cannot import {module_part!r} as Python")
        sys.path.insert(0, str(path.parent))
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
        return module, attr
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_part), attr
    except ModuleNotFoundError as exc:
        if exc.name and (module_part == exc.name or module_part.startswith(exc.name + ".")):
            raise UsageError(f"cannot import module {module_part!r}: not found") from None
        raise


def load_target(spec: str) -> Worker | Any:
    """The Worker or entrypoint that *spec* names (``file.py[:attr]``, ``module:attr``).

    Raises:
        UsageError: no such file, module or attribute, or not a Worker/function.
    """
    try:
        module, attr = _import_target(spec)
    except SyntaxError as exc:
        where = f"{exc.filename}:{exc.lineno}" if exc.filename else spec
        raise UsageError(f"{where}: syntax error: {exc.msg}") from None
    if attr:
        obj: Any = module
        for part in attr.split("."):
            if not hasattr(obj, part):
                raise UsageError(f"{spec}: {module.__name__} has no attribute {attr!r}")
            obj = getattr(obj, part)
    else:
        for candidate in DEFAULT_ATTRS:
            if hasattr(module, candidate):
                attr, obj = candidate, getattr(module, candidate)
                break
        else:
            raise UsageError(
                f"{spec}: defines neither `worker` nor `entrypoint`; name one as {spec}:ATTR"
            )
    if isinstance(obj, Worker):
        return obj
    if callable(getattr(obj, "on_job_assigned", None)) and not isinstance(obj, type):
        return obj  # a handler object (trio_lkagent.handlers)
    if callable(obj) and not isinstance(obj, type):
        check_entrypoint(obj, f"{spec}: {attr!r}")
        return obj
    raise UsageError(
        f"{spec}: {attr!r} is of type {type(obj).__name__}, expected a Worker, an async"
        " entrypoint function or a handler object"
    )


def check_entrypoint(fn: Any, what: str) -> None:
    """Reject a plain ``def`` entrypoint at load time (it must be ``async def``).

    Raises:
        UsageError: *fn* is not a coroutine function.
    """
    method = None if inspect.isroutine(fn) else type(fn).__dict__.get("__call__")
    if not (inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(method)):
        raise UsageError(
            f"{what} is a plain `def`: an entrypoint must be `async def entrypoint(ctx)`"
        )


def build_worker(target: Worker | Any, config: ServiceConfig) -> Worker:
    """A worker from a target: a Worker gets the explicit settings put over its
    options; an entrypoint gets options from the settings alone.

    Raises:
        ConfigurationError: missing URL or keys, invalid values.
    """
    if isinstance(target, Worker):
        target._set_options(config.apply_to(target.options).resolved())
        return target
    validate_config(config)
    return Worker(target, config.worker_options())


# -- commands -------------------------------------------------------------------------


def _configure_logging(config: ServiceConfig, *, default_level: str = "INFO") -> None:
    level = config.log_level if "log_level" in config.explicit else default_level
    configure_logging(level, config.log_format, websocket_debug=config.websocket_debug)


def _target(args: argparse.Namespace) -> Worker | Any:
    """The app given to :func:`run_app`, else what the TARGET argument names."""
    app = getattr(args, "app", None)
    return app if app is not None else load_target(args.target)


def _cmd_start(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ._service import run_worker, supervise

    config = _service_config(args)
    validate_config(config, require=())
    if config.processes > 1:
        if getattr(args, "app", None) is not None:
            if not args.app_spec:
                raise UsageError(
                    "--processes needs the app as a module attribute of the script"
                    " (worker = Worker(...) or async def entrypoint) to start it again"
                )
            argv = [argv[0], args.app_spec, *argv[1:]]
        _configure_logging(config)
        return trio.run(supervise, argv, config)
    worker = build_worker(_target(args), config)
    _configure_logging(config)  # once nothing can fail with a usage error any more
    return trio.run(run_worker, worker, config)


def _cmd_dev(args: argparse.Namespace, argv: Sequence[str]) -> int:
    from ._dev import DevSettings, run_dev

    dev = DevSettings(**_extra(_DEV_SETTINGS, args, attrs.asdict(DevSettings())))
    if dev.url:  # an external server: its keys from the flags and the environment
        config = _service_config(args, ignore=("url",))
        validate_config(config, require=("api_key", "api_secret"))
    else:
        config = _service_config(args, ignore=_CONNECTION_ATTRS)  # the dev server's own
    if dev.reload:
        return _dev_with_reload(args, argv)
    if "health_port" not in config.explicit:
        config = attrs.evolve(config, health_port=0)
    _configure_logging(config, default_level="WARNING")

    def load(local: ServiceConfig) -> Worker:
        return build_worker(_target(args), local)

    return trio.run(run_dev, load, config, dev)


def _dev_with_reload(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """``dev --reload``: this process watches, a child runs ``dev`` and is restarted."""
    from ._dev import run_with_reload

    rest = [a for a in argv if a != "--reload"]
    if getattr(args, "app", None) is not None:
        main_file = getattr(sys.modules.get("__main__"), "__file__", None)
        if not main_file:
            raise UsageError("--reload needs the agent to run from a file")
        child = [sys.executable, main_file, *rest]
        watch = Path(main_file).resolve().parent
    else:
        child = [sys.executable, "-m", PROG.replace("-", "_"), *rest]
        module_part = args.target.rpartition(":")[0] or args.target
        path = Path(module_part)
        watch = path.resolve().parent if path.suffix == ".py" else Path.cwd()
    configure_logging("WARNING")
    return trio.run(run_with_reload, child, watch)


def _cmd_devserver(args: argparse.Namespace, argv: Sequence[str]) -> int:
    config = _service_config(args)
    values = _extra(
        _DEVSERVER_SETTINGS,
        args,
        {"host": "127.0.0.1", "port": 7880, "api_key": "devkey", "api_secret": "secret"},
    )
    _configure_logging(config)
    return trio.run(_serve_devserver, values)


async def _serve_devserver(values: dict[str, Any]) -> int:
    import signal

    from ._service import say
    from .devserver import serve_devserver

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                lambda task_status: serve_devserver(
                    values["host"],
                    values["port"],
                    values["api_key"],
                    values["api_secret"],
                    task_status=task_status,
                )
            )
            say(f"LiveKit dev server at {server.url} (agents: {server.agent_url})")
            say(f"  api key:    {server.api_key}")
            say(f"  api secret: {server.api_secret}")
            say(
                f"  export LIVEKIT_URL={server.url} LIVEKIT_API_KEY={server.api_key}"
                f" LIVEKIT_API_SECRET={server.api_secret}"
            )
            say("Ctrl-C to stop")
            async for signum in signals:
                say(f"{signal.Signals(signum).name}: stopping")
                break
            nursery.cancel_scope.cancel()
    say("dev server stopped")
    return 0


def _cmd_dispatch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    config = _service_config(args)
    values = _extra(_DISPATCH_SETTINGS, args, {"room": "", "metadata": ""})
    if not values["room"]:
        raise ConfigurationError("LIVEKIT_ROOM is not set: set it or pass --room")
    validate_config(config, require=(*_CONNECTION_ATTRS, "agent_name"))
    if config.api_secret == DEV_API_SECRET:
        ignore_dev_key_warnings()  # livekit-api signs on the bridge's thread
    _configure_logging(config, default_level="WARNING")
    return trio.run(_dispatch, config, values["room"], values["metadata"])


#: How long ``dispatch`` watches for the dispatch's first job before warning.
DISPATCH_WATCH = 3.0


async def _dispatch(config: ServiceConfig, room: str, metadata: str) -> int:
    import asyncio

    from livekit import api as lkapi

    from ._bridge import open_bridge
    from ._service import say

    async def on_loop() -> tuple[Any, bool]:
        client = lkapi.LiveKitAPI(config.url, config.api_key, config.api_secret)
        try:
            dispatch = await client.agent_dispatch.create_dispatch(
                lkapi.CreateAgentDispatchRequest(
                    agent_name=config.agent_name, room=room, metadata=metadata
                )
            )
            # A server that finds no worker for the agent name creates no job, silently.
            # (LiveKit has no API listing workers; the dispatch's jobs tell.)
            for _ in range(int(DISPATCH_WATCH / 0.25)):
                for found in await client.agent_dispatch.list_dispatch(room_name=room):
                    if found.id == dispatch.id and found.state.jobs:
                        return dispatch, True
                await asyncio.sleep(0.25)
            return dispatch, False
        finally:
            await client.aclose()

    async with open_bridge() as bridge:
        try:
            with trio.fail_after(15 + DISPATCH_WATCH):
                dispatch, has_job = await bridge.run(on_loop)
        except trio.TooSlowError:
            raise LKAgentError(f"{config.url} did not answer within 15 s") from None
        except Exception as exc:
            raise LKAgentError(f"dispatch failed: {type(exc).__name__}: {exc}") from None
    say(f"dispatch {dispatch.id} created: agent {config.agent_name!r} in room {room!r}")
    if not has_job:
        print(
            f"{PROG}: warning: no job started for agent {config.agent_name!r} within"
            f" {DISPATCH_WATCH:g} s: is a worker registered with --agent-name"
            f" {config.agent_name}?",
            file=sys.stderr,
        )
    return 0


def run_app(app: Worker | Any, argv: Sequence[str] | None = None) -> NoReturn:
    """Run this file's agent with the ``trio-lkagent`` command line, then exit.

    Put at the end of the agent's file::

        if __name__ == "__main__":
            run_app(entrypoint)        # or run_app(worker)

    and run ``python my_agent.py start|dev|devserver|dispatch ...`` with the same
    flags, environment variables and exit codes as ``trio-lkagent COMMAND
    my_agent.py`` (``docs/cli.md``).

    Args:
        app: A :class:`~trio_lkagent.Worker`, or an ``async def entrypoint(ctx)``
            (its options then come from the flags and ``LIVEKIT_*`` alone).
        argv: The arguments (default ``sys.argv[1:]``).

    Raises:
        SystemExit: always, with the command's exit code (2: a plain ``def``
            entrypoint, invalid flags; 1: the worker could not run).
    """
    main_module = sys.modules.get("__main__")
    main_file = getattr(main_module, "__file__", None)
    prog = Path(main_file).name if main_file else PROG
    if not isinstance(app, Worker):
        problem = f"run_app() takes a Worker or an async entrypoint, got {app!r}"
        if callable(app) and not isinstance(app, type):
            try:
                check_entrypoint(app, f"run_app({getattr(app, '__name__', app)!r})")
                problem = ""
            except UsageError as exc:
                problem = str(exc)
        if problem:
            print(f"{prog}: error: {problem}", file=sys.stderr)
            raise SystemExit(2)
    # How child processes (--processes N) find the app again: FILE.py:ATTR.
    spec = ""
    if main_module is not None and main_file:
        for name, value in vars(main_module).items():
            if value is app:
                spec = f"{main_file}:{name}"
                break
    raise SystemExit(main(argv, app=app, app_spec=spec, prog=prog))


_COMMANDS = {
    "start": _cmd_start,
    "dev": _cmd_dev,
    "devserver": _cmd_devserver,
    "dispatch": _cmd_dispatch,
}


def _single(exc: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (nurseries wrap errors)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def main(
    argv: Sequence[str] | None = None,
    *,
    app: Worker | Any = None,
    app_spec: str = "",
    prog: str = PROG,
) -> int:
    """Run the command line; returns the exit code.

    0 on a clean stop, 1 when the worker could not run (refused credentials,
    unreachable server with recovery off, port in use), 2 for invalid flags,
    variables or targets, 130 when interrupted before the signal handlers were
    installed. Errors raised by the target's own code keep their traceback.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = _build_parser(prog=prog, with_target=app is None).parse_args(args_list)
    args.app, args.app_spec = app, app_spec
    try:
        return _COMMANDS[args.command](args, args_list)
    except BaseException as exc:
        error = _single(exc)
        if isinstance(error, UsageError | ConfigurationError):
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 2
        if isinstance(error, LKAgentError) or type(error) is OSError:
            print(f"{prog}: error: {error}", file=sys.stderr)
            return 1
        if isinstance(error, KeyboardInterrupt):
            return 130
        raise
