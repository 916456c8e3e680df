"""Configuration: one YAML file shared by every service, validated at start.

``load_settings(path, environ)`` is pure apart from reading the file: ``environ`` is injected (tests pass a
dict). ``${VAR}`` and ``${VAR:-default}`` are interpolated from ``environ`` in every string value; a missing
variable, a bad value or an unknown key raises :class:`~imrelay.errors.ConfigError` naming the dotted path of
the bad key. Secrets are :class:`pydantic.SecretStr`: they never show up in reprs, logs or exceptions.

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
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

if TYPE_CHECKING:
    from .connlimits import Limits

__all__ = [
    "BackendConfig",
    "BotConfig",
    "Platform",
    "Settings",
    "load_settings",
    "parse_settings",
]

DEFAULT_CONFIG_PATH = "./imrelay.yaml"
BOT_ID_RE = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Platform(StrEnum):
    WECOM_APP = "wecom_app"
    WECOM_GROUP_ROBOT = "wecom_group_robot"
    WECOM_AIBOT = "wecom_aibot"
    FEISHU = "feishu"
    LARK = "lark"
    DINGTALK = "dingtalk"
    QQ = "qq"
    DISCORD = "discord"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsAuth(_Model):
    """How a client proves who it is to NATS: user + password, a token, an NKey seed file or a ``.creds``
    (JWT) file; at most one of them. Each service may get its own through ``IMRELAY_NATS_*`` variables."""

    user: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    nkey_seed_file: str | None = None
    creds_file: str | None = None

    @model_validator(mode="after")
    def _one_method(self) -> NatsAuth:
        if (self.user is None) != (self.password is None):
            raise ValueError("user and password go together")
        methods = [m for m, v in (("user/password", self.user), ("token", self.token),
                                  ("nkey_seed_file", self.nkey_seed_file), ("creds_file", self.creds_file))
                   if v is not None]
        if len(methods) > 1:
            raise ValueError(f"choose one way to authenticate, not {' and '.join(methods)}")
        return self

    @property
    def method(self) -> str:
        for name, value in (("user", self.user), ("token", self.token), ("nkey", self.nkey_seed_file),
                            ("creds", self.creds_file)):
            if value is not None:
                return name
        return "none"


class NatsTLS(_Model):
    """TLS to NATS: the CA that signed the servers' certificates, and a client certificate for mTLS."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None  # the name to verify, if not the URL's host

    @model_validator(mode="after")
    def _pair(self) -> NatsTLS:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class NatsConfig(_Model):
    # One URL, or several separated by commas (the nodes of a cluster without a load-balanced address).
    url: str = "nats://127.0.0.1:4222"
    auth: NatsAuth = NatsAuth()
    # TLS settings; ``tls://`` URLs turn TLS on with the system's CAs when this is not set.
    tls: NatsTLS | None = None
    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    publish_timeout_seconds: float = Field(default=2.0, gt=0)
    # The ingress retries a publish that got no PubAck (a reconnect, a stream leader election) with the
    # same message id until this deadline, then answers 503 so the platform retries; keep it under the
    # platforms' answer timeouts (Feishu 3 s, WeCom 5 s).
    ingress_publish_deadline_seconds: float = Field(default=2.5, gt=0)
    dedupe_window_seconds: int = Field(default=86400, ge=60)
    # Set to the number of nats-server cluster nodes in production (1 for the embedded server).
    replicas: int = Field(default=1, ge=1, le=5)
    # Replies are spread over this many partitions by conversation: one conversation's replies are
    # delivered strictly in order, different partitions in parallel (the sender's parallelism, cluster-wide).
    out_partitions: int = Field(default=16, ge=1, le=256)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        for server in value.split(","):
            if not re.fullmatch(r"(nats|tls|ws|wss)://\S+", server.strip()):
                raise ValueError(f"not a NATS URL: {server.strip()!r} (nats://host:port, comma-separated)")
        return value

    @property
    def servers(self) -> list[str]:
        """The server URLs to connect to (a client tries them all and fails over between them)."""
        return [s.strip() for s in self.url.split(",")]

    @property
    def uses_tls(self) -> bool:
        return self.tls is not None or any(u.startswith(("tls://", "wss://")) for u in self.servers)


class ConnectionLimitsConfig(_Model):
    """Limits on one HTTP port, so slow or idle clients cannot hold it open (see README "Connection
    limits"). A request cut off by a deadline gets a 408 and the connection is closed."""

    # The request line and headers must arrive within this long of the connection's first byte (or of the
    # end of the previous answer on a kept-alive connection).
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    # A body must arrive within this long after the headers, plus its size at the floor rate below.
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    body_min_rate_bytes_per_second: float = Field(default=16384.0, gt=0)
    # A connection with no request in progress (never used, or after an answer) is closed after this long.
    keep_alive_timeout_seconds: float = Field(default=5.0, gt=0)
    # Connections beyond this many (per process) get a 503 and are closed at once. Lowered automatically
    # to leave room under the process's descriptor limit (ulimit -n).
    max_connections: int = Field(default=4096, ge=1)

    def limits(self, max_body_bytes: int | None = None) -> Limits:
        from .connlimits import Limits

        return Limits(header_timeout=self.header_timeout_seconds, body_timeout=self.body_timeout_seconds,
                      body_min_rate=self.body_min_rate_bytes_per_second,
                      keep_alive_timeout=self.keep_alive_timeout_seconds,
                      max_connections=self.max_connections, max_body_bytes=max_body_bytes)


class IngressConfig(_Model):
    host: str = "0.0.0.0"  # noqa: S104 - the public callback port listens on all interfaces
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    connections: ConnectionLimitsConfig = Field(default_factory=ConnectionLimitsConfig)


class AdminConfig(_Model):
    host: str = "0.0.0.0"  # noqa: S104 - probes and Prometheus scrape from outside the pod
    port: int = Field(default=9464, ge=1, le=65535)
    # Only Prometheus and the probes talk to the admin port: a small cap is plenty.
    connections: ConnectionLimitsConfig = Field(
        default_factory=lambda: ConnectionLimitsConfig(max_connections=64))


class WorkerConfig(_Model):
    concurrency: int = Field(default=16, ge=1, le=1024)
    ack_wait_seconds: float = Field(default=30.0, gt=1)
    max_deliver: int = Field(default=5, ge=1)
    answer_timeout_seconds: float = Field(default=120.0, gt=0)
    # Deltas are coalesced for this long before one reply chunk is published.
    delta_interval_seconds: float = Field(default=0.2, ge=0)
    # Model providers see a keyed hash of the user (and of the conversation), stable per user and bot,
    # never the platform's own user id. The key is derived from each bot's credentials unless set here
    # (set it to keep the pseudonyms when credentials are rotated).
    pseudonymize_users: bool = True
    pseudonym_key: SecretStr | None = None


class RateLimitConfig(_Model):
    limit: int = Field(ge=1)
    window_seconds: float = Field(gt=0)


# The platforms' own limits: WeCom app 30 messages a minute per app and member, a group robot 20 a minute
# per webhook, Feishu 50/s per app and 5/s per chat, a DingTalk robot 20 a minute, QQ 5/s per channel
# (Discord announces its own per route). Operators can lower or raise them in sender.rate_limits.
DEFAULT_RATE_LIMITS: dict[str, RateLimitConfig] = {
    "wecom_app.per_user": RateLimitConfig(limit=30, window_seconds=60),
    "wecom_group_robot.per_webhook": RateLimitConfig(limit=20, window_seconds=60),
    "feishu.per_app": RateLimitConfig(limit=50, window_seconds=1),
    "feishu.per_chat": RateLimitConfig(limit=5, window_seconds=1),
    "dingtalk.per_robot": RateLimitConfig(limit=20, window_seconds=60),
    "qq.per_channel": RateLimitConfig(limit=5, window_seconds=1),
}


class SenderConfig(_Model):
    ack_wait_seconds: float = Field(default=60.0, gt=1)
    max_deliver: int = Field(default=8, ge=1)
    max_attempts: int = Field(default=4, ge=1, le=20)
    backoff_base_seconds: float = Field(default=0.5, gt=0)
    backoff_max_seconds: float = Field(default=30.0, gt=0)
    http_timeout_seconds: float = Field(default=10.0, gt=0)
    token_refresh_skew_seconds: float = Field(default=300.0, ge=0)
    # How long to wait after a platform frequency-limit answer (WeCom 45009) that names no retry-after.
    rate_limit_backoff_seconds: float = Field(default=60.0, ge=0)
    # A delivery claimed by a replica that then died is taken over after this long. Keep it above the
    # longest platform call with its retries (about max_attempts x http_timeout_seconds).
    claim_timeout_seconds: float = Field(default=120.0, gt=0)
    # Limits by scope (see DEFAULT_RATE_LIMITS); entries here replace the defaults of the same name.
    rate_limits: dict[str, RateLimitConfig] = Field(default_factory=dict)
    # Each limit's window is widened by this much: for network delay and clock differences between hosts.
    rate_limit_margin_seconds: float = Field(default=1.0, ge=0)

    def rate_limit(self, scope: str) -> RateLimitConfig | None:
        return self.rate_limits.get(scope) or DEFAULT_RATE_LIMITS.get(scope)


class MemoryConfig(_Model):
    enabled: bool = True
    ttl_seconds: float = Field(default=7 * 86400, gt=0)  # a conversation idle this long is forgotten
    max_turns: int = Field(default=10, ge=1)
    max_chars: int = Field(default=8000, ge=100)
    per_user_in_groups: bool = True  # in a group, each member has their own conversation with the bot


class ConnectorConfig(_Model):
    lease_ttl_seconds: float = Field(default=10.0, ge=2)  # a dead owner's socket is taken over after this
    heartbeat_seconds: float = Field(default=30.0, gt=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    ack_timeout_seconds: float = Field(default=5.0, gt=0)
    # An answer stream not updated for about 6 minutes expires on WeCom's side: while the model is silent,
    # the stream is shown again (unchanged) after this long, so it must stay below the expiry.
    stream_keepalive_seconds: float = Field(default=240.0, gt=0, lt=360)
    healthy_seconds: float = Field(default=5.0, ge=0)  # a socket up this long starts the backoff anew
    kick_holdoff_seconds: float = Field(default=600.0, ge=0)  # down this long after another instance
    refused_retry_seconds: float = Field(default=300.0, gt=0)  # after WeCom refuses bot_id/secret


class BackendKind(StrEnum):
    ECHO = "echo"
    OPENAI = "openai"
    DIFY = "dify"
    FASTGPT = "fastgpt"


class BackendConfig(_Model):
    kind: BackendKind = BackendKind.ECHO
    base_url: str | None = None
    api_key: SecretStr | None = None
    model: str | None = None
    system_prompt: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    timeout_seconds: float = Field(default=60.0, gt=0)
    idle_timeout_seconds: float = Field(default=30.0, gt=0)
    error_message: str = "Sorry, I could not answer that just now. Please try again in a moment."

    @model_validator(mode="after")
    def _check_kind(self) -> BackendConfig:
        if self.kind is not BackendKind.ECHO:
            if not self.base_url:
                raise ValueError(f"base_url is required for a {self.kind.value} backend")
            if self.kind is BackendKind.OPENAI and not self.model:
                raise ValueError("model is required for an openai backend")
        return self


# ---- per-platform credentials (keys as in DESIGN.md) -------------------------------------------------


def _check_aes_key(v: SecretStr) -> SecretStr:
    if len(v.get_secret_value()) != 43:
        raise ValueError("EncodingAESKey must be exactly 43 characters")
    return v


AesKey = Annotated[SecretStr, AfterValidator(_check_aes_key)]


class WeComAppCredentials(_Model):
    corp_id: str = Field(min_length=1)
    agent_id: str = Field(min_length=1)
    secret: SecretStr
    token: SecretStr
    encoding_aes_key: AesKey

    @field_validator("agent_id", mode="before")
    @classmethod
    def _agent_id_str(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v



class WeComBotCredentials(_Model):
    token: SecretStr
    encoding_aes_key: AesKey
    bot_id: str | None = None
    secret: SecretStr | None = None


class FeishuCredentials(_Model):
    app_id: str
    app_secret: SecretStr
    encrypt_key: SecretStr = SecretStr("")
    verification_token: SecretStr


class DingTalkCredentials(_Model):
    app_key: str
    app_secret: SecretStr
    # The robot's code, checked against every callback's ``robotCode``; an app robot's code is its AppKey.
    robot_code: str | None = None

    @property
    def expected_robot_code(self) -> str:
        return self.robot_code or self.app_key


class QQCredentials(_Model):
    app_id: str
    app_secret: SecretStr


class DiscordCredentials(_Model):
    application_id: str
    public_key: str  # the application's public key, 64 hex characters
    bot_token: SecretStr

    @field_validator("public_key")
    @classmethod
    def _hex_key(cls, v: str) -> str:
        try:
            if len(bytes.fromhex(v)) == 32:
                return v.lower()
        except ValueError:
            pass
        raise ValueError("public_key must be the 64 hex characters shown in the Developer Portal")


class _BotBase(_Model):
    id: Annotated[str, Field(pattern=BOT_ID_RE)]
    backend: str = "default"
    api_base: str | None = None
    auth_base: str | None = None  # where access tokens come from, if not api_base (QQ: bots.qq.com)
    mode: Literal["callback", "long_connection"] = "callback"
    system_prompt: str | None = None
    model: str | None = None  # overrides the backend's model for this bot
    temperature: float | None = Field(default=None, ge=0, le=2)
    answer_timeout_seconds: float | None = Field(default=None, gt=0)  # overrides worker's
    # Platforms that cannot edit a message first show this when the answer's first words take longer than
    # thinking_after_seconds (off when empty).
    thinking_message: str | None = None
    thinking_after_seconds: float = Field(default=3.0, gt=0)
    # markdown: answers go out as the platform's markdown message where it has one (WeCom app and group
    # robot, Feishu/Lark cards); text is the safe default (markdown shows only in the WeCom client)
    reply_format: Literal["text", "markdown"] = "text"
    # Callbacks whose signed timestamp is further than this from the ingress's clock are refused as replays
    # (WeCom, Feishu/Lark, DingTalk, QQ and Discord sign a timestamp). 0 turns the check off where the
    # platform has no window of its own; DingTalk's own one-hour window always applies.
    replay_window_seconds: float = Field(default=300.0, ge=0)


class WeComAppBot(_BotBase):
    platform: Literal[Platform.WECOM_APP]
    credentials: WeComAppCredentials


class WeComGroupRobotBot(_BotBase):
    platform: Literal[Platform.WECOM_GROUP_ROBOT]
    credentials: WeComBotCredentials


class WeComAIBot(_BotBase):
    platform: Literal[Platform.WECOM_AIBOT]
    credentials: WeComBotCredentials
    # long_connection mode: the WebSocket the connector dials (private deployments show their own)
    ws_url: str = "wss://openws.work.weixin.qq.com"

    @model_validator(mode="after")
    def _long_connection_credentials(self) -> WeComAIBot:
        if self.mode == "long_connection" and (not self.credentials.bot_id or not self.credentials.secret):
            raise ValueError("long_connection mode needs credentials.bot_id and credentials.secret")
        return self


class FeishuBot(_BotBase):
    platform: Literal[Platform.FEISHU, Platform.LARK]
    credentials: FeishuCredentials
    # Without an Encrypt Key, Feishu/Lark neither signs nor encrypts events: anyone who learns the
    # verification token can post any event, and a body altered in transit goes unnoticed. Such a bot is
    # refused unless this is set explicitly (and then a warning is logged at start).
    allow_unsigned_events: bool = False

    @model_validator(mode="after")
    def _signed_events(self) -> FeishuBot:
        if not self.credentials.encrypt_key.get_secret_value() and not self.allow_unsigned_events:
            raise _PathValueError(
                "credentials.encrypt_key",
                "an Encrypt Key is required (Feishu/Lark signs events only when one is set); "
                "set allow_unsigned_events: true to accept unsigned events anyway")
        return self


class DingTalkBot(_BotBase):
    platform: Literal[Platform.DINGTALK]
    credentials: DingTalkCredentials


class QQBot(_BotBase):
    platform: Literal[Platform.QQ]
    credentials: QQCredentials


class DiscordBot(_BotBase):
    platform: Literal[Platform.DISCORD]
    credentials: DiscordCredentials


BotConfig = Annotated[
    WeComAppBot | WeComGroupRobotBot | WeComAIBot | FeishuBot | DingTalkBot | QQBot | DiscordBot,
    Field(discriminator="platform"),
]

DEFAULT_API_BASE: dict[Platform, str] = {
    Platform.WECOM_APP: "https://qyapi.weixin.qq.com",
    Platform.WECOM_GROUP_ROBOT: "https://qyapi.weixin.qq.com",
    Platform.WECOM_AIBOT: "https://qyapi.weixin.qq.com",
    Platform.FEISHU: "https://open.feishu.cn",
    Platform.LARK: "https://open.larksuite.com",
    Platform.DINGTALK: "https://api.dingtalk.com",
    Platform.QQ: "https://api.sgroup.qq.com",
    Platform.DISCORD: "https://discord.com",
}


DEFAULT_AUTH_BASE: dict[Platform, str] = {Platform.QQ: "https://bots.qq.com"}


class Settings(_Model):
    nats: NatsConfig = NatsConfig()
    ingress: IngressConfig = IngressConfig()
    admin: AdminConfig = AdminConfig()
    worker: WorkerConfig = WorkerConfig()
    sender: SenderConfig = SenderConfig()
    memory: MemoryConfig = MemoryConfig()
    connector: ConnectorConfig = ConnectorConfig()
    backends: dict[str, BackendConfig] = Field(default_factory=lambda: {"default": BackendConfig()})
    bots: list[BotConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_refs(self) -> Settings:
        seen: set[str] = set()
        for i, bot in enumerate(self.bots):
            if bot.id in seen:
                raise _PathValueError(f"bots.{i}.id", f"duplicate bot id {bot.id!r}")
            seen.add(bot.id)
            if bot.backend not in self.backends:
                raise _PathValueError(
                    f"bots.{i}.backend",
                    f"unknown backend {bot.backend!r} (defined: {', '.join(sorted(self.backends))})",
                )
        return self

    def bot(self, bot_id: str) -> BotConfig | None:
        for bot in self.bots:
            if bot.id == bot_id:
                return bot
        return None

    def api_base(self, bot: BotConfig) -> str:
        return (bot.api_base or DEFAULT_API_BASE[bot.platform]).rstrip("/")

    def auth_base(self, bot: BotConfig) -> str:
        default = DEFAULT_AUTH_BASE.get(bot.platform)
        if bot.auth_base:
            return bot.auth_base.rstrip("/")
        return default if default and not bot.api_base else self.api_base(bot)


class _PathValueError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


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


_TAGS = {p.value for p in Platform}


def _loc_to_path(loc: tuple[int | str, ...]) -> str:
    # Drop discriminator tags pydantic inserts for tagged unions ("bots.0.wecom_app.credentials").
    parts = [str(p) for i, p in enumerate(loc) if not (i > 0 and loc[i - 1] != "platform"
                                                        and isinstance(p, str) and p in _TAGS)]
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
        nats["auth"] = {k: v for k, v in nats["auth"].items()
                        if k in {_ENV_OVERRIDES[e][-1] for e in _ENV_AUTH if environ.get(e)}}
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _PathValueError):
            prefix = _loc_to_path(tuple(err["loc"]))  # where the model that raised it sits
            path = f"{prefix}.{ctx_err.path}" if prefix else ctx_err.path
            raise ConfigError(path, str(ctx_err)) from None
        msg = err["msg"].removeprefix("Value error, ")
        loc = tuple(err["loc"])
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc = (*loc, "platform")
            msg = f"must be one of: {', '.join(p.value for p in Platform)}"
        raise ConfigError(_loc_to_path(loc), msg) from None


def load_settings(path: str | os.PathLike[str] | None = None,
                  environ: Mapping[str, str] | None = None) -> Settings:
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
