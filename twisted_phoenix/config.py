# -*- test-case-name: tests.test_tap -*-
"""
Settings shared by ``twistd phoenix`` and the ``twisted-phoenix`` command:
the secret key base and the environment it may default in.
"""

from __future__ import annotations

import os
from typing import Mapping

from twisted.logger import Logger

__all__ = ["DEV_SECRET_KEY_BASE", "ConfigError", "resolve_env", "resolve_secret"]

log = Logger()

#: Used in the ``dev`` environment when no secret is configured.  Anyone can
#: read it here, so tokens signed with it prove nothing.
DEV_SECRET_KEY_BASE = (
    "twisted_phoenix development secret key base: public, never use it in production"
)


class ConfigError(ValueError):
    """A setting that is missing or wrong."""


def resolve_env(explicit: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """``--env``, else ``PHOENIX_ENV``, else ``dev``."""
    env = explicit or environ.get("PHOENIX_ENV") or "dev"
    if env not in ("dev", "test", "prod"):
        raise ConfigError(f"unknown environment {env!r}: use dev, test or prod")
    return env


def resolve_secret(
    explicit: str | None = None, env: str = "dev", environ: Mapping[str, str] = os.environ
) -> str:
    """
    ``--secret-key-base``, else ``SECRET_KEY_BASE``; in ``dev`` and ``test``,
    a public development default (with a warning).

    :raises ConfigError: in ``prod`` without a secret, or with one shorter
        than 64 bytes (Phoenix's ``mix phx.gen.secret`` length).
    """
    secret = explicit or environ.get("SECRET_KEY_BASE")
    if secret:
        if env == "prod" and len(secret) < 64:
            raise ConfigError("the secret key base must be at least 64 characters long")
        return secret
    if env == "prod":
        raise ConfigError("set --secret-key-base or SECRET_KEY_BASE (64+ characters) in prod")
    log.warn(
        "No secret key base configured: using the public development secret "
        "(set SECRET_KEY_BASE; `twisted-phoenix secret` makes one)"
    )
    return DEV_SECRET_KEY_BASE
