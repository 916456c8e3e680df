"""Configuration: one YAML file shared by every service, validated at start.

``load_settings(path, environ)`` is pure apart from reading the file: ``environ`` is injected (tests pass a
dict). ``${VAR}`` and ``${VAR:-default}`` are interpolated from ``environ`` in every string value; missing
variables, bad values or unknown keys raise :class:`~imrelay.errors.ConfigError` naming the dotted path of
each bad key (all of them at once). Secrets are :class:`pydantic.SecretStr`: they never show up in reprs,
logs or exceptions.

The service sections are in :mod:`imrelay.sections`, what every bot has in :mod:`imrelay.bots`, and each
platform's bot model in its package (:mod:`imrelay.platforms`).

Environment overrides: ``IMRELAY_CONFIG`` (file path, default ``./imrelay.yaml``), ``IMRELAY_NATS_URL``,
``IMRELAY_PORT`` (ingress public port), ``IMRELAY_ADMIN_PORT`` (admin port of whichever service reads it),
and a service's own NATS credentials: ``IMRELAY_NATS_USER`` + ``IMRELAY_NATS_PASSWORD``,
``IMRELAY_NATS_TOKEN``, ``IMRELAY_NATS_NKEY_SEED_FILE`` or ``IMRELAY_NATS_CREDS_FILE`` (these replace
``nats.auth`` from the file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import yaml
from pydantic import Field, ValidationError, model_validator

from . import platforms
from .bots import BOT_ID_RE, BotBase, PathValueError
from .errors import ConfigError
from .sections import (
    AdminConfig,
    BackendConfig,
    BackendKind,
    ConfigModel,
    ConnectionLimitsConfig,
    ConnectorConfig,
    IngressConfig,
    MediaConfig,
    MemoryConfig,
    NatsAuth,
    NatsConfig,
    NatsTLS,
    RateLimitConfig,
    SenderConfig,
    WorkerConfig,
)

__all__ = [
    "BOT_ID_RE",
    "AdminConfig",
    "BackendConfig",
    "BackendKind",
    "BotBase",
    "BotConfig",
    "ConnectionLimitsConfig",
    "ConnectorConfig",
    "IngressConfig",
    "MediaConfig",
    "MemoryConfig",
    "NatsAuth",
    "NatsConfig",
    "NatsTLS",
    "RateLimitConfig",
    "SenderConfig",
    "Settings",
    "WorkerConfig",
    "load_settings",
    "parse_settings",
]

DEFAULT_CONFIG_PATH = "./imrelay.yaml"
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

# One ``bots:`` entry: every registered platform's bot model, told apart by ``platform``. Code outside a
# platform's package sees what every bot has (BotBase); the platform's own code gets its own model.
if TYPE_CHECKING:
    BotConfig: TypeAlias = BotBase
else:
    BotConfig = platforms.bot_union()


class Settings(ConfigModel):
    nats: NatsConfig = NatsConfig()
    ingress: IngressConfig = IngressConfig()
    admin: AdminConfig = AdminConfig()
    worker: WorkerConfig = WorkerConfig()
    sender: SenderConfig = SenderConfig()
    memory: MemoryConfig = MemoryConfig()
    connector: ConnectorConfig = ConnectorConfig()
    media: MediaConfig = MediaConfig()
    backends: dict[str, BackendConfig] = Field(default_factory=lambda: {"default": BackendConfig()})
    bots: list[BotConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_refs(self) -> Settings:
        seen: set[str] = set()
        for i, bot in enumerate(self.bots):
            if bot.id in seen:
                raise PathValueError(f"bots.{i}.id", f"duplicate bot id {bot.id!r}")
            seen.add(bot.id)
            if bot.backend not in self.backends:
                raise PathValueError(
                    f"bots.{i}.backend",
                    f"unknown backend {bot.backend!r} (defined: {', '.join(sorted(self.backends))})",
                )
        return self

    def bot(self, bot_id: str) -> BotConfig | None:
        for bot in self.bots:
            if bot.id == bot_id:
                return bot
        return None

    def api_base(self, bot: BotBase) -> str:
        return platforms.api_base(bot)

    def auth_base(self, bot: BotBase) -> str:
        return platforms.auth_base(bot)


def _interpolate(value: Any, environ: Mapping[str, str], path: str) -> Any:
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(path, f"environment variable {name} is not set")

        return _ENV_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, environ, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, environ, f"{path}.{i}") for i, v in enumerate(value)]
    return value


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    # Drop discriminator tags pydantic inserts for tagged unions ("bots.0.<platform>.credentials").
    parts = [
        str(p)
        for i, p in enumerate(loc)
        if not (i > 0 and loc[i - 1] != "platform" and isinstance(p, str) and p in platforms.tags())
    ]
    return ".".join(parts)


_ENV_OVERRIDES: dict[str, tuple[str, ...]] = {
    "IMRELAY_NATS_URL": ("nats", "url"),
    "IMRELAY_PORT": ("ingress", "port"),
    "IMRELAY_ADMIN_PORT": ("admin", "port"),
    "IMRELAY_NATS_USER": ("nats", "auth", "user"),
    "IMRELAY_NATS_PASSWORD": ("nats", "auth", "password"),
    "IMRELAY_NATS_TOKEN": ("nats", "auth", "token"),
    "IMRELAY_NATS_NKEY_SEED_FILE": ("nats", "auth", "nkey_seed_file"),
    "IMRELAY_NATS_CREDS_FILE": ("nats", "auth", "creds_file"),
}
_ENV_AUTH = [e for e, path in _ENV_OVERRIDES.items() if path[:2] == ("nats", "auth")]


def parse_settings(data: Mapping[str, Any] | None, environ: Mapping[str, str]) -> Settings:
    """Validate an already-loaded YAML mapping, applying ``${ENV}`` and the IMRELAY_* overrides."""
    raw: dict[str, Any] = dict(_interpolate(dict(data or {}), environ, ""))
    for env, keys in _ENV_OVERRIDES.items():
        if environ.get(env):
            node = raw
            for key in keys[:-1]:
                child = node.get(key)
                node[key] = child = dict(child) if isinstance(child, dict) else {}
                node = child
            node[keys[-1]] = environ[env]
    if any(environ.get(env) for env in _ENV_AUTH):  # a service's own credentials replace the file's
        nats = raw["nats"]
        nats["auth"] = {
            k: v
            for k, v in nats["auth"].items()
            if k in {_ENV_OVERRIDES[e][-1] for e in _ENV_AUTH if environ.get(e)}
        }
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors(include_url=False, include_input=False)]
        unique = list(dict.fromkeys(problems))
        path, message = unique[0]
        raise ConfigError(path, message, more=unique[1:]) from None


def _problem(err: Any) -> tuple[str, str]:
    """(dotted path, message) of one validation error."""
    ctx_err = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_err, PathValueError):
        prefix = _loc_to_path(tuple(err["loc"]))  # where the model that raised it sits
        return (f"{prefix}.{ctx_err.path}" if prefix else ctx_err.path), str(ctx_err)
    msg = str(err["msg"]).removeprefix("Value error, ")
    loc = tuple(err["loc"])
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc = (*loc, "platform")
        msg = f"must be one of: {', '.join(platforms.tags())}"
    return _loc_to_path(loc), msg


def load_settings(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read and validate the config file named by ``path`` or ``IMRELAY_CONFIG``."""
    env = os.environ if environ is None else environ
    file = Path(path or env.get("IMRELAY_CONFIG") or DEFAULT_CONFIG_PATH)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file {file} not found (set IMRELAY_CONFIG)") from None
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {file}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("", f"{file} is not valid YAML{where}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError("", f"{file} must contain a mapping at the top level")
    return parse_settings(data, env)
