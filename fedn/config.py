"""Typed settings: one pydantic-settings class per service, env prefix ``FEDN_``, CLI flags on top."""

from __future__ import annotations

import argparse
from typing import TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

from fedn.errors import validation_problem

__all__ = ["add_settings_arguments", "settings_from_args"]

S = TypeVar("S", bound=BaseSettings)


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[BaseSettings], env_prefix: str) -> None:
    """Add one ``--flag`` per settings field; help shows the env var and the default."""
    for name, field in cls.model_fields.items():
        flag = "--" + name.replace("_", "-")
        env = (env_prefix + name).upper()
        default = field.default if field.default is not None else "none"
        text = f"{field.description or ''} [env {env}; default {default}]".strip()
        if field.annotation is bool:
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            parser.add_argument(flag, dest=name, default=None, help=text, metavar=name.upper())


def settings_from_args(cls: type[S], args: argparse.Namespace) -> S:
    """Settings from env, overridden by the flags that were given; InvalidArgument on bad values."""
    given = {name: getattr(args, name) for name in cls.model_fields if getattr(args, name, None) is not None}
    try:
        return cls(**given)
    except ValidationError as exc:
        raise validation_problem(exc, "invalid settings") from None
