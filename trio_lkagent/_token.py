"""The worker's access token, signed with the standard library.

``livekit.api.AccessToken`` pulls in aiohttp (and PyJWT pulls in
cryptography): a tenth of a second of imports for one HMAC. A LiveKit token is
a JWT signed with HS256 (RFC 7519, RFC 7515), which ``hmac`` and ``json`` do in
a few lines; tests check it against PyJWT and ``livekit.api``'s verifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

__all__ = ["agent_token", "sign_hs256"]

#: Lifetime of a worker token (livekit.api's default TTL: 6 hours).
DEFAULT_TTL = 6 * 3600


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def sign_hs256(claims: Mapping[str, Any], secret: str) -> str:
    """A compact JWS (``header.payload.signature``) of *claims*, HMAC-SHA256 with *secret*."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    payload = _b64(json.dumps(dict(claims), separators=(",", ":")).encode())
    signing_input = header + b"." + payload
    signature = hmac.new(secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _b64(signature)).decode("ascii")


def agent_token(api_key: str, api_secret: str, *, ttl: int = DEFAULT_TTL) -> str:
    """The token a worker presents on ``/agent``: the ``agent`` video grant.

    The claims are those of ``AccessToken(key, secret).with_grants(VideoGrants(
    agent=True)).to_jwt()``: the grant (with the publish/subscribe defaults
    livekit.api writes), ``sub`` (empty), ``iss`` (the key), ``nbf`` and ``exp``.
    """
    now = int(time.time())
    claims = {
        "video": {
            "canPublish": True,
            "canSubscribe": True,
            "canPublishData": True,
            "agent": True,
        },
        "sub": "",
        "iss": api_key,
        "nbf": now,
        "exp": now + ttl,
    }
    return sign_hs256(claims, api_secret)
