"""Access-token checks of the HTTP front (Go's ``APIKeyAuthMiddleware``, ``service/auth.go``)."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping

import attrs
import jwt
from livekit import api as lkapi
from livekit.api.access_token import Claims

__all__ = [
    "ERR_INVALID_API_KEY",
    "ERR_INVALID_TOKEN",
    "ERR_MISSING_AUTHORIZATION",
    "ERR_PERMISSION_DENIED",
    "AuthFailure",
    "Grants",
    "authenticate",
]

BEARER_PREFIX = "Bearer "

# The Go server's error texts (the body of its 401 answers).
ERR_MISSING_AUTHORIZATION = "invalid authorization header. Must start with Bearer "
ERR_INVALID_TOKEN = "invalid authorization token"
ERR_INVALID_API_KEY = "invalid API key"
#: ``rtc.ErrPermissionDenied``, what ``/agent`` answers without an ``agent`` grant.
ERR_PERMISSION_DENIED = "no permissions to access the room"


class AuthFailure(Exception):
    """The request's credentials were refused: answer HTTP *status* with *reason*."""

    def __init__(self, reason: str, status: int = 401) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


@attrs.frozen
class Grants:
    """A verified token: the key that signed it and its claims."""

    api_key: str
    claims: Claims

    @property
    def can_register_agent(self) -> bool:
        """Whether the ``video`` grant has ``agent: true``."""
        return bool(self.claims.video is not None and self.claims.video.agent)


@contextlib.contextmanager
def quiet_short_keys() -> Iterator[None]:
    """Silence PyJWT's ``InsecureKeyLengthWarning``: LiveKit's dev convention is
    the key pair ``devkey`` / ``secret``, shorter than the 32 bytes PyJWT wants."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The HMAC key is")
        yield


def authenticate(
    authorization: str | None, access_token: str | None, keys: Mapping[str, str]
) -> Grants | None:
    """Verify the request's token like the Go middleware does.

    Args:
        authorization: The ``Authorization`` header, if any.
        access_token: The ``access_token`` query parameter, used when there is no header.
        keys: API key -> secret.

    Returns:
        The grants, or None when the request carries no token at all (the
        endpoint then decides; ``/agent`` refuses).

    Raises:
        AuthFailure: a malformed header, an unknown key, a bad signature, an
            expired token.
    """
    if authorization:
        if not authorization.startswith(BEARER_PREFIX):
            raise AuthFailure(ERR_MISSING_AUTHORIZATION)
        token = authorization[len(BEARER_PREFIX) :]
    else:
        token = access_token or ""
    if not token:
        return None
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise AuthFailure(ERR_INVALID_TOKEN) from None
    api_key = unverified.get("iss")
    secret = keys.get(api_key) if isinstance(api_key, str) else None
    if not secret or not isinstance(api_key, str):
        raise AuthFailure(ERR_INVALID_API_KEY)
    try:
        with quiet_short_keys():
            claims = lkapi.TokenVerifier(api_key, secret).verify(token)
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise AuthFailure(f"{ERR_INVALID_TOKEN}: {exc}") from None
    return Grants(api_key=api_key, claims=claims)
