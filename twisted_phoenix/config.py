# -*- test-case-name: tests.test_tap -*-
"""
Settings shared by ``twistd phoenix`` and the ``twisted-phoenix`` command:
the secret key base and the environment it may default in.
"""

from __future__ import annotations

import os
from typing import Mapping

from twisted.logger import Logger

__all__ = ["COOKIE_FILE", "DEV_SECRET_KEY_BASE", "ConfigError", "resolve_cookie", "resolve_env", "resolve_secret"]

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


#: Where a node keeps its cookie when none is configured, like Erlang's
#: ``~/.erlang.cookie``: every node started by the same user shares it.
COOKIE_FILE = "~/.twisted_phoenix.cookie"


def resolve_cookie(
    explicit: str | None = None, environ: Mapping[str, str] = os.environ, path: str = COOKIE_FILE
) -> str:
    """
    The cluster cookie: ``--cookie``, else ``PHOENIX_COOKIE``, else the
    cookie file (created with a random cookie, readable by its owner only,
    when it does not exist yet).
    """
    cookie = explicit or environ.get("PHOENIX_COOKIE")
    if cookie:
        return cookie
    import secrets

    path = os.path.expanduser(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    except FileExistsError:
        with open(path, encoding="ascii") as f:
            cookie = f.read().strip()
    else:
        cookie = secrets.token_urlsafe(24)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(cookie)
        log.info("Created the cluster cookie file {path}", path=path)
    if not cookie:
        raise ConfigError(f"the cookie file {path} is empty")
    return cookie
