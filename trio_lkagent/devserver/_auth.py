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


def participant_access_token(
    api_key: str,
    api_secret: str,
    room: str,
    identity: str,
    *,
    name: str = "",
    metadata: str = "",
    attributes: Mapping[str, str] | None = None,
    kind: str | None = None,
) -> lkapi.AccessToken:
    """The (unsigned) ``AccessToken`` of a participant joining *room*: the caller
    signs it with ``to_jwt()``, under the warning filter that suits its key."""
    token = (
        lkapi.AccessToken(api_key, api_secret)
        .with_identity(identity)
        .with_name(name)
        .with_metadata(metadata)
        .with_grants(lkapi.VideoGrants(room_join=True, room=room))
    )
    if attributes:
        token = token.with_attributes(dict(attributes))
    if kind is not None:
        token = token.with_kind(kind)  # type: ignore[arg-type]
    return token


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
            # The signature first (as Go's Claims() does), then the claims' types.
            jwt.decode(
                token,
                secret,
                algorithms=["HS256"],
                options={"verify_exp": False, "verify_nbf": False, "verify_aud": False},
            )
            check_claim_types(unverified)
            if any(unverified.get(name, 0) is None for name in _SUB_GRANTS):
                # Go reads ``"video": null`` as no video grant (a nil pointer); the
                # SDK's verifier would crash on it: verify the token with them removed.
                normalized = {k: v for k, v in unverified.items() if v is not None}
                token = jwt.encode(normalized, secret, algorithm="HS256")
            claims = lkapi.TokenVerifier(api_key, secret).verify(token)
    except (jwt.PyJWTError, ValueError, TypeError, AttributeError) as exc:
        raise AuthFailure(f"{ERR_INVALID_TOKEN}: {exc}") from None
    return Grants(api_key=api_key, claims=claims)


# -- claim types, as Go's encoding/json decodes ClaimGrants (livekit/protocol auth) ----
#
# Go decodes the token's JSON into typed structs: a grant given as "false" (a
# string) or a ``video`` given as a list is a decoding error, so the token is
# refused. Python's truthiness would read "false" as granted; this check keeps
# the dev server's answers the Go server's. ``null`` is allowed everywhere (Go
# leaves the zero value), unknown fields are ignored (as Go does).

_BOOL, _STR, _STRS, _STRMAP, _NUM = "bool", "string", "[]string", "map[string]string", "number"

_VIDEO_GRANT: dict[str, str] = {
    **dict.fromkeys(
        (
            "roomCreate",
            "roomList",
            "roomRecord",
            "roomAdmin",
            "roomJoin",
            "canPublish",
            "canSubscribe",
            "canPublishData",
            "canUpdateOwnMetadata",
            "ingressAdmin",
            "hidden",
            "recorder",
            "agent",
            "canSubscribeMetrics",
        ),
        _BOOL,
    ),
    "room": _STR,
    "destinationRoom": _STR,
    "canPublishSources": _STRS,
}
_SUB_GRANTS: dict[str, tuple[str, dict[str, str]]] = {
    "video": ("VideoGrant", _VIDEO_GRANT),
    "sip": ("SIPGrant", {"admin": _BOOL, "call": _BOOL}),
    "agent": ("AgentGrant", {"admin": _BOOL}),
}
_CLAIM_GRANTS: dict[str, str] = {
    "name": _STR,
    "kind": _STR,
    "metadata": _STR,
    "sha256": _STR,
    "roomPreset": _STR,
    "attributes": _STRMAP,
    "sub": _STR,
    "iss": _STR,
    "jti": _STR,
    "exp": _NUM,
    "nbf": _NUM,
    "iat": _NUM,
}


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_ok(value: object, go_type: str) -> bool:
    if value is None:
        return True
    if go_type == _BOOL:
        return isinstance(value, bool)
    if go_type == _STR:
        return isinstance(value, str)
    if go_type == _NUM:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if go_type == _STRS:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if go_type == _STRMAP:
        return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())
    raise AssertionError(go_type)


def _mismatch(value: object, struct: str, path: str, go_type: str) -> ValueError:
    return ValueError(
        f"json: cannot unmarshal {_json_kind(value)} into Go struct field"
        f" {struct}.{path} of type {go_type}"
    )


def check_claim_types(payload: object) -> None:
    """Refuse claims Go's JSON decoding of ``ClaimGrants`` would refuse.

    Raises:
        ValueError: with Go's ``json: cannot unmarshal ...`` text.
    """
    if not isinstance(payload, dict):
        raise ValueError(f"json: cannot unmarshal {_json_kind(payload)} into Go value")  # noqa: TRY004 - caught with the decoding errors
    for name, go_type in _CLAIM_GRANTS.items():
        value = payload.get(name)
        if not _type_ok(value, go_type):
            raise _mismatch(value, "ClaimGrants", name, go_type)
    for name, (struct, fields) in _SUB_GRANTS.items():
        grant = payload.get(name)
        if grant is None:
            continue
        if not isinstance(grant, dict):
            raise _mismatch(grant, "ClaimGrants", name, f"auth.{struct}")
        for field, go_type in fields.items():
            value = grant.get(field)
            if not _type_ok(value, go_type):
                raise _mismatch(value, struct, f"{name}.{field}", go_type)
