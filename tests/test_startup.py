"""Fast start: what ``import trio_lkagent`` loads, and the worker's own token signing."""

from __future__ import annotations

import json
import subprocess
import sys

import jwt
import pytest
from livekit import api as lkapi

import trio_lkagent
from trio_lkagent._token import agent_token, sign_hs256

HEAVY = ("livekit.rtc", "livekit.api", "numpy", "aiohttp", "hypercorn", "prometheus_client")


def _modules_after(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_import_loads_only_what_a_worker_needs() -> None:
    loaded = _modules_after("import trio_lkagent")
    assert not {m for m in HEAVY if m in loaded}
    assert "trio_lkagent._cli" not in loaded  # run_app loads the command line on use
    # Building a worker (telemetry included) still loads none of them.
    loaded = _modules_after(
        "from trio_lkagent import Worker, WorkerOptions\n"
        "async def ep(ctx): pass\n"
        "Worker(ep, WorkerOptions(url='ws://127.0.0.1:1', api_key='k', api_secret='s'))"
        "._auth_headers()"
    )
    assert not {m for m in (*HEAVY, "jwt", "opentelemetry.trace") if m in loaded}


def test_lazy_names_load_their_module_on_first_use() -> None:
    loaded = _modules_after("from trio_lkagent import Room, AudioFrame")
    assert {"livekit.rtc", "numpy", "trio_lkagent._room"} <= loaded


@pytest.mark.parametrize("name", sorted(trio_lkagent._LAZY))
def test_every_lazy_name_resolves(name: str) -> None:
    value = getattr(trio_lkagent, name)
    assert value.__name__ == name
    assert name in dir(trio_lkagent)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        trio_lkagent.no_such_name  # noqa: B018


def test_agent_token_matches_livekit_api() -> None:
    secret = "a-secret-long-enough-for-hs256-keys!!"
    ours = jwt.decode(agent_token("key", secret), secret, algorithms=["HS256"])
    reference = lkapi.AccessToken("key", secret).with_grants(lkapi.VideoGrants(agent=True))
    theirs = jwt.decode(reference.to_jwt(), secret, algorithms=["HS256"])
    assert ours["video"] == theirs["video"]
    assert (ours["iss"], ours["sub"]) == (theirs["iss"], theirs["sub"])
    assert abs(ours["exp"] - theirs["exp"]) <= 2 and abs(ours["nbf"] - theirs["nbf"]) <= 2
    # livekit.api's own verifier accepts it.
    claims = lkapi.TokenVerifier("key", secret).verify(agent_token("key", secret))
    assert claims.video is not None and claims.video.agent


def test_sign_hs256_rejects_with_the_wrong_secret() -> None:
    token = sign_hs256({"a": 1}, "right" * 8)
    assert jwt.decode(token, "right" * 8, algorithms=["HS256"]) == {"a": 1}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, "wrong" * 8, algorithms=["HS256"])
