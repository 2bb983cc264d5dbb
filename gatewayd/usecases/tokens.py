"""The server secret, login tokens (JWT, HS256) and the PIN hash key derived from it.

One secret does two jobs. It signs login tokens as is, so a service given the same
``JWT_SECRET`` can verify them; and HMAC-SHA256(secret, a fixed label) is the key of the PIN
hash, so PINs are stored as HMAC-SHA256(pin key, PIN): a deterministic hash a login can look
up, which a stolen database alone cannot reverse by trying the 36^6 PINs. The consequence:
**changing the secret ends every login and invalidates every PIN** (users generate new
ones). API keys are hashed without it and stay valid.

The secret is ``auth.jwt_secret`` (``JWT_SECRET``) when set; otherwise one is generated on
first start and kept, readable by its owner only, in ``auth.secret_file`` (default
``<database.data_dir>/auth.secret``). Two daemons starting at once on one data dir agree:
the file is created only if absent, and whoever loses the race reads the winner's.

Tokens carry ``sub`` (the user id), ``jti`` (a random id, what a logout revokes), ``iat``
and ``exp``. Only HS256 is accepted: ``alg: none``, another algorithm, a wrong signature, a
past ``exp`` or a missing claim is refused with Unauthorized.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

import attrs
import jwt
import structlog

from gatewayd.config import AuthConfig
from gatewayd.errors import ConfigError, Unauthorized

__all__ = [
    "ALGORITHM",
    "AuthSecrets",
    "TokenClaims",
    "decode_token",
    "issue_token",
    "load_secret",
    "secret_path",
]

log = structlog.get_logger()

ALGORITHM = "HS256"
_PIN_KEY_LABEL = b"gatewayd/pin-hash/v1"
_REQUIRED = ["sub", "jti", "iat", "exp"]
_INVALID = "invalid or expired token"


@attrs.frozen
class AuthSecrets:
    """The token signing key and the PIN hash key. Never logged (no repr)."""

    jwt_key: bytes = attrs.field(repr=False)
    pin_key: bytes = attrs.field(repr=False)

    @classmethod
    def from_secret(cls, secret: bytes) -> AuthSecrets:
        if len(secret) < 32:
            raise ValueError("the secret must be at least 32 bytes")
        pin_key = hmac.new(secret, _PIN_KEY_LABEL, hashlib.sha256).digest()
        return cls(jwt_key=secret, pin_key=pin_key)

    def pin_hash(self, pin: str) -> str:
        """The stored form of ``pin``: hex HMAC-SHA256 under the PIN key."""
        return hmac.new(self.pin_key, pin.encode(), hashlib.sha256).hexdigest()


@attrs.frozen
class TokenClaims:
    """What a valid login token says."""

    user_id: str
    jti: str
    issued_at: datetime
    expires_at: datetime


def issue_token(
    keys: AuthSecrets, user_id: str, *, ttl: float, now: datetime | None = None
) -> tuple[str, TokenClaims]:
    """A new signed token for ``user_id``, valid ``ttl`` seconds from ``now``."""
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    claims = TokenClaims(
        user_id=user_id,
        jti=secrets.token_urlsafe(16),
        issued_at=issued,
        expires_at=issued + timedelta(seconds=int(ttl)),
    )
    payload = {
        "sub": claims.user_id,
        "jti": claims.jti,
        "iat": int(claims.issued_at.timestamp()),
        "exp": int(claims.expires_at.timestamp()),
    }
    return jwt.encode(payload, keys.jwt_key, algorithm=ALGORITHM), claims


def decode_token(keys: AuthSecrets, token: str) -> TokenClaims:
    """The claims of a valid token; Unauthorized for anything else. Revocation is not checked
    here (that needs the database)."""
    try:
        payload = jwt.decode(
            token,
            keys.jwt_key,
            algorithms=[ALGORITHM],
            options={"require": _REQUIRED, "verify_signature": True},
        )
    except jwt.PyJWTError as exc:
        # The class name says why (ExpiredSignatureError, InvalidSignatureError, ...);
        # the token itself is never logged.
        log.info("gatewayd.auth.token_refused", reason=type(exc).__name__)
        raise Unauthorized(_INVALID) from None
    sub, jti = payload.get("sub"), payload.get("jti")
    iat, exp = payload.get("iat"), payload.get("exp")
    if not (isinstance(sub, str) and sub and isinstance(jti, str) and jti):
        log.info("gatewayd.auth.token_refused", reason="bad_claims")
        raise Unauthorized(_INVALID)
    if not (isinstance(iat, int | float) and isinstance(exp, int | float)):
        raise Unauthorized(_INVALID)  # PyJWT checks their types; this is for mypy
    return TokenClaims(
        user_id=sub,
        jti=jti,
        issued_at=datetime.fromtimestamp(iat, UTC),
        expires_at=datetime.fromtimestamp(exp, UTC),
    )


def secret_path(auth: AuthConfig, data_dir: str | os.PathLike[str]) -> Path:
    """Where the generated secret is kept."""
    return Path(auth.secret_file) if auth.secret_file else Path(data_dir) / "auth.secret"


def load_secret(auth: AuthConfig, data_dir: str | os.PathLike[str]) -> AuthSecrets:
    """The configured secret, else the kept one, else a new one kept from now on.

    Blocking file I/O: call it at start (or through ``trio.to_thread``). Raises ConfigError
    when the file cannot be read or written, or holds something that is not a secret.
    """
    if auth.jwt_secret:
        return AuthSecrets.from_secret(auth.jwt_secret.encode())
    path = secret_path(auth, data_dir)
    try:
        return AuthSecrets.from_secret(_read_or_create(path))
    except (OSError, ValueError) as exc:
        raise ConfigError([f"auth.secret_file: {path}: {exc}"]) from None


def _read_or_create(path: Path) -> bytes:
    try:
        return _decode(path.read_text(encoding="ascii"))
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(base64.urlsafe_b64encode(secrets.token_bytes(48)).decode() + "\n")
            f.flush()
            os.fsync(f.fileno())
        # link() fails if the name exists: never overwrite a secret another process kept.
        try:
            os.link(tmp, path)
            log.warning("gatewayd.auth.secret_generated", path=str(path))
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return _decode(path.read_text(encoding="ascii"))


def _decode(text: str) -> bytes:
    try:
        secret = base64.urlsafe_b64decode(text.strip().encode("ascii"))
    except ValueError:
        raise ValueError("not a base64 secret") from None
    if len(secret) < 32:
        raise ValueError("the kept secret is shorter than 32 bytes")
    return secret
