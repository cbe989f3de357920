"""Typed settings: one pydantic-settings class per service, env prefix ``FEDN_``, CLI flags on top.

A field that may carry a credential is marked ``Field(..., json_schema_extra={"secret": True})`` and
typed ``SecretStr``, so its value shows as ``**********`` in reprs and never in a message. Such a
field can also be read from a file, the Docker and Kubernetes secrets convention: env
``PREFIX_NAME_FILE=/run/secrets/x`` or flag ``--name-file PATH`` (the file's content, less one
trailing newline). Giving a value and a file at the same level (both flags, or both variables) is an
error; a flag of either kind overrides the environment, as flags always do.

Byte settings (fields named ``*_bytes``) take sizes with a unit, as flags and as variables: ``64MiB``,
``1GiB``, ``512KB`` (KB/MB/GB are powers of 1000, KiB/MiB/GiB of 1024); help prints them the same way.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr, ValidationError
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from fedn.errors import InvalidArgument, validation_problem

__all__ = ["add_settings_arguments", "format_size", "parse_size", "port_taken", "secret_fields", "settings_from_args"]

S = TypeVar("S", bound=BaseSettings)


def secret_fields(cls: type[BaseSettings]) -> list[str]:
    """Names of the fields marked secret, in declaration order."""
    return [
        name
        for name, field in cls.model_fields.items()
        if isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("secret") is True
    ]


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_size(text: str | int, source: str = "size") -> int:
    """Bytes in ``text``: a plain count or a number with a unit (``64MiB``, ``1GiB``, ``512KB``)."""
    if isinstance(text, int):
        return text
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise InvalidArgument(f"{source} {text!r} is not a size: use bytes or a unit, e.g. 64MiB, 1GiB, 512KB")
    return int(float(match.group(1)) * _UNITS[unit])


def format_size(num_bytes: int) -> str:
    """``num_bytes`` in the largest binary unit that divides it exactly (1073741824 -> 1GiB)."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        scale = _UNITS[unit.lower()]
        if num_bytes and num_bytes % scale == 0:
            return f"{num_bytes // scale}{unit}"
    return str(num_bytes)


def _is_size(name: str) -> bool:
    return name.endswith("_bytes")


def _default_text(name: str, field: Any) -> str:
    """How help shows a field's default: "required", a size with its unit, or the value."""
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "set at start"
    default: Any = field.default
    if default is PydanticUndefined:
        return "required"
    if isinstance(default, SecretStr):  # defaults are public (they hold no credential); show them
        default = default.get_secret_value()
    if default is None:
        return "none"
    if isinstance(default, int) and not isinstance(default, bool) and _is_size(name):
        return format_size(default)
    return str(default)


def port_taken(host: str, port: int, env: str) -> InvalidArgument:
    """The one-line error for a port another process holds, saying how to pick another."""
    return InvalidArgument(
        f"port {port} on {host} is already in use: stop what holds it, or pick another with --port "
        f"(env {env}; 0 = any free port)"
    )


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[BaseSettings], env_prefix: str) -> None:
    """Add one ``--flag`` per settings field, and ``--flag-file`` per secret; help shows env and default."""
    secrets = set(secret_fields(cls))
    for name, field in cls.model_fields.items():
        flag = _flag(name)
        env = (env_prefix + name).upper()
        default = _default_text(name, field)
        extra = f"; or {flag}-file / {env}_FILE" if name in secrets else ""
        text = f"{field.description or ''} [env {env}; default {default}{extra}]".strip()
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=text, metavar=name.upper())
        if name in secrets:
            parser.add_argument(
                f"{flag}-file",
                dest=f"{name}_file",
                default=None,
                metavar="PATH",
                help=f"file holding {flag} (Docker/Kubernetes secrets; less one trailing newline) [env {env}_FILE]",
            )


def settings_from_args(cls: type[S], args: argparse.Namespace) -> S:
    """Settings from env, overridden by the flags that were given; InvalidArgument on bad values."""
    given = {name: getattr(args, name) for name in cls.model_fields if getattr(args, name, None) is not None}
    prefix = str(cls.model_config.get("env_prefix", "")).upper()
    environ = {key.upper(): value for key, value in os.environ.items()}
    for name in cls.model_fields:
        if not _is_size(name):
            continue
        if name in given:
            given[name] = parse_size(given[name], _flag(name))
        elif (prefix + name.upper()) in environ:  # pydantic would refuse "64MiB" from the environment
            given[name] = parse_size(environ[prefix + name.upper()], prefix + name.upper())
    for name in secret_fields(cls):
        value = _secret_value(name, args, prefix, environ)
        if value is not None:
            given[name] = value
    try:
        return cls(**given)
    except ValidationError as exc:
        raise validation_problem(exc, "invalid settings") from None


def _secret_value(name: str, args: argparse.Namespace, prefix: str, environ: dict[str, str]) -> str | None:
    """The value a file gives secret ``name``, or None when the flag or env value (if any) stands."""
    flag, flag_file = getattr(args, name, None), getattr(args, f"{name}_file", None)
    if flag is not None and flag_file is not None:
        raise InvalidArgument(f"give {_flag(name)} or {_flag(name)}-file, not both")
    if flag_file is not None:
        return _read_secret(flag_file, f"{_flag(name)}-file")
    if flag is not None:
        return None
    env = prefix + name.upper()
    env_file = environ.get(env + "_FILE")
    if env_file is not None and env in environ:
        raise InvalidArgument(f"set {env} or {env}_FILE, not both")
    return None if env_file is None else _read_secret(env_file, f"{env}_FILE")


def _read_secret(path: str, source: str) -> str:
    """The file's text less one trailing newline; InvalidArgument (naming only the path) if unusable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise InvalidArgument(f"cannot read {source} {path}: {reason}") from None
    text = text.removesuffix("\n").removesuffix("\r") if text.endswith("\n") else text
    if not text:
        raise InvalidArgument(f"{source} {path} is empty")
    return text
