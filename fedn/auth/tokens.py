"""Signed bearer tokens: who a caller is (the subject) and what it may do (the role).

Tokens are JWTs signed with an Ed25519 key (PyJWT, algorithm ``EdDSA``). Whoever holds the private
key can issue tokens: the operator (``fedn token create --key``) and the reducer (``POST
/api/v1/tokens``, and the short-lived token it presents to combiners). Combiners hold only the public
key, so a compromised combiner can check tokens but never mint one. A revoked token's id (``jti``)
is refused by the reducer at once and by combiners from their next heartbeat on.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from fedn.errors import InvalidArgument, Unauthenticated
from fedn.ids import check_id

__all__ = [
    "DEFAULT_TTL_S",
    "MAX_TTL_S",
    "IssuedToken",
    "Principal",
    "Role",
    "TokenIssuer",
    "TokenVerifier",
    "bearer_token",
    "generate_signing_key",
    "load_private_key",
    "load_public_key",
    "parse_ttl",
    "read_token_file",
]

logger = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
ISSUER = "fedn"
DEFAULT_TTL_S = 30 * 86400
MAX_TTL_S = 3650 * 86400
_MAX_TOKEN_CHARS = 4096
_LEEWAY_S = 30.0  # clocks of different hosts disagree a little
_CACHE_SIZE = 10_000  # verified tokens remembered, so 10,000 clients' calls cost one signature check each


class Role(StrEnum):
    ADMIN = "admin"  # runs the federation: sessions, models, tokens, the audit log
    VIEWER = "viewer"  # reads everything an admin reads, changes nothing
    COMBINER = "combiner"  # registers and heartbeats as its subject; serves clients
    CLIENT = "client"  # trains as its subject at a combiner
    REDUCER = "reducer"  # the reducer itself, calling combiners (RunRound, AnnounceModel)


@dataclass(frozen=True)
class Principal:
    """A verified caller. ``subject`` is its id (a client's or combiner's id, or a person's name)."""

    subject: str
    role: Role
    token_id: str
    expires_at: float


def parse_ttl(text: str) -> float:
    """``90d``, ``12h``, ``30m``, ``45s`` or plain seconds, between one minute and ten years."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise InvalidArgument(f"--ttl {text!r}: give a duration such as 90d, 12h, 30m or 3600")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if not 60 <= seconds <= MAX_TTL_S:
        raise InvalidArgument(f"--ttl {text!r}: a token lives between 1 minute and {MAX_TTL_S // 86400} days")
    return seconds


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def generate_signing_key(out_dir: Path) -> tuple[Path, Path]:
    """Write ``token-signing.key`` (private, mode 0600) and ``token-signing.pub`` into ``out_dir``;
    refuses to overwrite a key, since every token signed with it would stop working."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key_path, pub_path = out_dir / "token-signing.key", out_dir / "token-signing.pub"
    if key_path.exists():
        raise InvalidArgument(f"{key_path} exists: tokens signed with it would stop working; remove it first")
    key = Ed25519PrivateKey.generate()
    _write_private(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    pub_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key_path, pub_path


def _read(path: str | Path, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"{flag} {path}: {exc.strerror or exc}") from None


def load_private_key(path: str | Path, flag: str = "--token-signing-key"):
    """The Ed25519 private key in ``path``; InvalidArgument naming ``flag`` when it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(_read(path, flag), password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"{flag} {path}: not a PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidArgument(f"{flag} {path}: an Ed25519 key is needed (make one with `fedn token keygen`)")
    return key


def load_public_key(path: str | Path, flag: str = "--token-public-key"):
    """The Ed25519 public key in ``path`` (a private key file is accepted too: its public half is used)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    data = _read(path, flag)
    if b"PRIVATE KEY" in data:
        return load_private_key(path, flag).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise InvalidArgument(f"{flag} {path}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey | Ed25519PrivateKey):
        raise InvalidArgument(f"{flag} {path}: an Ed25519 key is needed (make one with `fedn token keygen`)")
    return key


def read_token_file(path: str | Path, flag: str = "--token-file") -> str:
    """A token kept in a file (one line; a trailing newline is dropped)."""
    token = _read(path, flag).decode("ascii", errors="replace").strip()
    if not token:
        raise InvalidArgument(f"{flag} {path}: the file is empty")
    return token


@dataclass(frozen=True)
class IssuedToken:
    token: str
    principal: Principal
    issued_at: float


class TokenIssuer:
    """Signs tokens with the federation's private key."""

    def __init__(self, private_key, *, wall: Callable[[], float] = time.time) -> None:
        self._key = private_key
        self._wall = wall  # tokens carry wall-clock times, unlike the monotonic fedn.clock

    def issue(self, role: Role | str, subject: str, ttl_s: float = DEFAULT_TTL_S) -> IssuedToken:
        import jwt

        try:
            role = Role(role)
        except ValueError:
            raise InvalidArgument(f"role {role!r}: one of {', '.join(r.value for r in Role)}") from None
        check_id(subject, "subject")
        if not 0 < ttl_s <= MAX_TTL_S:
            raise InvalidArgument(f"ttl {ttl_s}: between 0 and {MAX_TTL_S} seconds")
        now = self._wall()
        token_id = secrets.token_urlsafe(16)
        claims = {"iss": ISSUER, "sub": subject, "role": role.value, "jti": token_id}
        claims |= {"iat": int(now), "exp": int(now + ttl_s)}
        token = jwt.encode(claims, self._key, algorithm=ALGORITHM)
        return IssuedToken(token, Principal(subject, role, token_id, float(claims["exp"])), now)


class TokenVerifier:
    """Checks signature, expiry, issuer, role and revocation; remembers tokens it has verified."""

    def __init__(self, public_key, *, wall: Callable[[], float] = time.time) -> None:
        self._key = public_key
        self._wall = wall
        self._revoked: frozenset[str] = frozenset()
        self._cache: OrderedDict[str, Principal] = OrderedDict()

    def set_revoked(self, token_ids: Iterable[str]) -> None:
        """Replace the set of revoked token ids (the reducer's list, as of its last answer)."""
        self._revoked = frozenset(token_ids)

    @property
    def revoked(self) -> frozenset[str]:
        return self._revoked

    def verify(self, token: str) -> Principal:
        principal = self._cache.get(token)
        if principal is None:
            principal = self._decode(token)
            self._cache[token] = principal
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        if principal.expires_at + _LEEWAY_S < self._wall():
            self._cache.pop(token, None)
            raise Unauthenticated("the token has expired")
        if principal.token_id in self._revoked:
            raise Unauthenticated(f"token {principal.token_id} has been revoked")
        return principal

    def _decode(self, token: str) -> Principal:
        import jwt

        if not token or len(token) > _MAX_TOKEN_CHARS:
            raise Unauthenticated("the token is empty or too long")
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[ALGORITHM],
                issuer=ISSUER,
                leeway=_LEEWAY_S,
                options={"require": ["exp", "iat", "sub", "jti", "iss"], "verify_exp": False},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"the token is not valid: {exc}") from None
        try:
            role = Role(claims.get("role"))
            subject = check_id(str(claims["sub"]), "subject")
            token_id = check_id(str(claims["jti"]), "token id")
            expires_at = float(claims["exp"])
        except (ValueError, InvalidArgument) as exc:
            raise Unauthenticated(f"the token's claims are not valid: {exc}") from None
        return Principal(subject, role, token_id, expires_at)


def bearer_token(header: str | None) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` value; Unauthenticated when it is missing."""
    if not header:
        raise Unauthenticated("no token: send 'Authorization: Bearer TOKEN' (see `fedn token create`)")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("the Authorization header must be 'Bearer TOKEN'")
    return token.strip()
