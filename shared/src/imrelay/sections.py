"""The service sections of the configuration file: NATS, the ingress and admin ports, the worker, the sender,
memory, the connector and the model backends. Bots are in :mod:`imrelay.bots` and each platform's package;
:mod:`imrelay.config` loads the file."""

from __future__ import annotations

import re
from enum import StrEnum
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

if TYPE_CHECKING:
    from .connlimits import Limits


class ConfigModel(BaseModel):
    """Base of every configuration model: unknown keys refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NatsAuth(ConfigModel):
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
        methods = [
            m
            for m, v in (
                ("user/password", self.user),
                ("token", self.token),
                ("nkey_seed_file", self.nkey_seed_file),
                ("creds_file", self.creds_file),
            )
            if v is not None
        ]
        if len(methods) > 1:
            raise ValueError(f"choose one way to authenticate, not {' and '.join(methods)}")
        return self

    @property
    def method(self) -> str:
        for name, value in (
            ("user", self.user),
            ("token", self.token),
            ("nkey", self.nkey_seed_file),
            ("creds", self.creds_file),
        ):
            if value is not None:
                return name
        return "none"


class NatsTLS(ConfigModel):
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


class NatsConfig(ConfigModel):
    # One URL, or several separated by commas (the nodes of a cluster without a load-balanced address).
    url: str = "nats://127.0.0.1:4222"
    auth: NatsAuth = NatsAuth()
    # TLS settings; ``tls://`` URLs turn TLS on with the system's CAs when this is not set.
    tls: NatsTLS | None = None
    connect_timeout_seconds: float = Field(default=2.0, gt=0)
    publish_timeout_seconds: float = Field(default=2.0, gt=0)
    # The ingress retries a publish that got no PubAck (a reconnect, a stream leader election) with the
    # same message id until this deadline, then answers 503 so the platform retries; keep it under the
    # platforms' answer timeouts (3 to 5 s; each platform's page in docs/ says its own).
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


class ConnectionLimitsConfig(ConfigModel):
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

        return Limits(
            header_timeout=self.header_timeout_seconds,
            body_timeout=self.body_timeout_seconds,
            body_min_rate=self.body_min_rate_bytes_per_second,
            keep_alive_timeout=self.keep_alive_timeout_seconds,
            max_connections=self.max_connections,
            max_body_bytes=max_body_bytes,
        )


class IngressConfig(ConfigModel):
    host: str = "0.0.0.0"  # noqa: S104 - the public callback port listens on all interfaces
    port: int = Field(default=8080, ge=1, le=65535)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    connections: ConnectionLimitsConfig = Field(default_factory=ConnectionLimitsConfig)
    # Processes serving the public port, each with its own NATS connection; the kernel spreads new
    # connections over them (SO_REUSEPORT). The first also serves the admin port, with the metrics of all
    # of them summed. One process uses one CPU: set it to the CPUs a replica has (1 suits a pod per CPU).
    workers: int = Field(default=1, ge=1, le=64)


class AdminConfig(ConfigModel):
    host: str = "0.0.0.0"  # noqa: S104 - probes and Prometheus scrape from outside the pod
    port: int = Field(default=9464, ge=1, le=65535)
    # Only Prometheus and the probes talk to the admin port: a small cap is plenty.
    connections: ConnectionLimitsConfig = Field(
        default_factory=lambda: ConnectionLimitsConfig(max_connections=64)
    )


class WorkerConfig(ConfigModel):
    # Answers one worker process streams at once. Each mostly waits on the model (a connection and a few
    # tens of kilobytes each): a thousand or more fit in one process.
    concurrency: int = Field(default=256, ge=1, le=10_000)
    # A message a worker holds is redelivered to another this long after the worker stops reporting it in
    # progress (it reports three times per ack wait): how soon a killed worker's conversations resume.
    ack_wait_seconds: float = Field(default=6.0, gt=1)
    max_deliver: int = Field(default=5, ge=1)
    answer_timeout_seconds: float = Field(default=120.0, gt=0)
    # Deltas are coalesced for this long before one reply chunk is published.
    delta_interval_seconds: float = Field(default=0.2, ge=0)
    # Model providers see a keyed hash of the user (and of the conversation), stable per user and bot,
    # never the platform's own user id. The key is derived from each bot's credentials unless set here
    # (set it to keep the pseudonyms when credentials are rotated).
    pseudonymize_users: bool = True
    pseudonym_key: SecretStr | None = None


class RateLimitConfig(ConfigModel):
    limit: int = Field(ge=1)
    window_seconds: float = Field(gt=0)


class SenderConfig(ConfigModel):
    # A reply a sender holds is redelivered to another this long after the sender stops reporting it in
    # progress (it reports three times per ack wait).
    ack_wait_seconds: float = Field(default=6.0, gt=1)
    max_deliver: int = Field(default=8, ge=1)
    max_attempts: int = Field(default=4, ge=1, le=20)
    backoff_base_seconds: float = Field(default=0.5, gt=0)
    backoff_max_seconds: float = Field(default=30.0, gt=0)
    http_timeout_seconds: float = Field(default=10.0, gt=0)
    token_refresh_skew_seconds: float = Field(default=300.0, ge=0)
    # How long to wait after a platform's frequency-limit answer that names no retry-after.
    rate_limit_backoff_seconds: float = Field(default=60.0, ge=0)
    # A delivery claimed by a replica that then died is taken over after this long. The replica posting
    # rewrites its claim three times per this long, however long the platform takes: a dead replica's held
    # replies go out after about this long plus the ack wait's share.
    claim_timeout_seconds: float = Field(default=6.0, gt=0)
    # Limits by scope (each platform names its scopes and their defaults: `imrelay config reference`);
    # entries here replace the defaults of the same name.
    rate_limits: dict[str, RateLimitConfig] = Field(default_factory=dict)
    # Each limit's window is widened by this much: for network delay and clock differences between hosts.
    rate_limit_margin_seconds: float = Field(default=1.0, ge=0)

    def rate_limit(self, scope: str) -> RateLimitConfig | None:
        from .platforms import default_rate_limits

        return self.rate_limits.get(scope) or default_rate_limits().get(scope)


class MemoryConfig(ConfigModel):
    enabled: bool = True
    ttl_seconds: float = Field(default=7 * 86400, gt=0)  # a conversation idle this long is forgotten
    max_turns: int = Field(default=10, ge=1)
    max_chars: int = Field(default=8000, ge=100)
    per_user_in_groups: bool = True  # in a group, each member has their own conversation with the bot


class ConnectorConfig(ConfigModel):
    lease_ttl_seconds: float = Field(default=10.0, ge=2)  # a dead owner's socket is taken over after this
    heartbeat_seconds: float = Field(default=30.0, gt=0)
    reconnect_max_seconds: float = Field(default=30.0, gt=0)
    ack_timeout_seconds: float = Field(default=5.0, gt=0)
    # An answer stream not updated for about 6 minutes expires on the platform's side: while the model is
    # silent, the stream is shown again (unchanged) after this long, so it must stay below the expiry.
    stream_keepalive_seconds: float = Field(default=240.0, gt=0, lt=360)
    healthy_seconds: float = Field(default=5.0, ge=0)  # a socket up this long starts the backoff anew
    kick_holdoff_seconds: float = Field(default=600.0, ge=0)  # down this long after another instance
    # down this long after the platform refuses the bot's credentials
    refused_retry_seconds: float = Field(default=300.0, gt=0)


class SpeechToTextConfig(ConfigModel):
    """An OpenAI-compatible ``/audio/transcriptions`` endpoint for voice messages the platform does not
    transcribe itself."""

    base_url: str  # e.g. https://api.openai.com/v1 (``/audio/transcriptions`` is added)
    api_key: SecretStr | None = None
    model: str = "whisper-1"
    timeout_seconds: float = Field(default=60.0, gt=0)


class MediaConfig(ConfigModel):
    """Pictures, files, voice and video in messages and answers."""

    enabled: bool = True  # off: attachments are not downloaded and answers' images stay links
    max_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)  # per piece, besides the platform's limits
    max_per_message: int = Field(default=8, ge=1, le=64)  # attachments read, images sent per answer
    ttl_seconds: float = Field(default=86400.0, ge=60)  # how long the media bucket keeps the bytes
    fetch_timeout_seconds: float = Field(default=30.0, gt=0)
    max_redirects: int = Field(default=3, ge=0, le=10)
    # networks answers' images and messages' URLs may be fetched from although private (e.g. 10.0.0.0/8);
    # loopback, link-local (the cloud metadata address) and other private addresses are refused otherwise
    allow_private_networks: list[str] = Field(default_factory=list)
    speech_to_text: SpeechToTextConfig | None = None  # off by default

    @field_validator("allow_private_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"not a network: {item!r} (e.g. 10.0.0.0/8)") from exc
        return value


class BackendKind(StrEnum):
    ECHO = "echo"
    OPENAI = "openai"
    DIFY = "dify"
    FASTGPT = "fastgpt"


class BackendConfig(ConfigModel):
    kind: BackendKind = BackendKind.ECHO
    base_url: str | None = None
    api_key: SecretStr | None = None
    model: str | None = None
    system_prompt: str | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    timeout_seconds: float = Field(default=60.0, gt=0)
    idle_timeout_seconds: float = Field(default=30.0, gt=0)
    error_message: str = "Sorry, I could not answer that just now. Please try again in a moment."
    vision: bool = False  # openai: the model reads images (sent as image_url data URLs)

    @model_validator(mode="after")
    def _check_kind(self) -> BackendConfig:
        if self.kind is not BackendKind.ECHO:
            if not self.base_url:
                raise ValueError(f"base_url is required for a {self.kind.value} backend")
            if self.kind is BackendKind.OPENAI and not self.model:
                raise ValueError("model is required for an openai backend")
        return self
