"""The configuration's JSON Schema and its Markdown reference, both generated from the models in
:mod:`imrelay.config` (``imrelay config schema``, ``imrelay config reference > docs/configuration.md``).

A key's meaning is its ``Field(description=...)``, else its entry in :data:`MEANINGS` below, else the
comment written beside or above it in ``config.py``. Every key has one (a test checks it, and that
docs/configuration.md is what this module generates).
"""

from __future__ import annotations

import inspect
import io
import re
import tokenize
import types
from enum import Enum
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from . import config as c
from . import platforms
from .bots import BotBase

__all__ = [
    "MEANINGS",
    "chart_bots_schema",
    "config_reference",
    "config_schema",
    "iter_keys",
    "with_chart_bots_schema",
]

# Meanings of keys that carry no comment in config.py, by "Model.field".
MEANINGS: dict[str, str] = {
    "MediaConfig.fetch_timeout_seconds": "Time allowed for one download (an attachment, an answer's image).",
    "MediaConfig.max_redirects": "Redirects followed when fetching an answer's image (each target checked "
    "again against the private-address rules).",
    "NatsAuth.user": "NATS user name (with `password`); `IMRELAY_NATS_USER` gives a service its own.",
    "NatsAuth.password": "NATS password (with `user`); `IMRELAY_NATS_PASSWORD`.",
    "NatsAuth.token": "A NATS token instead of a user; `IMRELAY_NATS_TOKEN`.",
    "NatsAuth.nkey_seed_file": "File holding an NKey seed to authenticate with; "
    "`IMRELAY_NATS_NKEY_SEED_FILE`.",
    "NatsAuth.creds_file": "A `.creds` file (user JWT and NKey seed); `IMRELAY_NATS_CREDS_FILE`.",
    "NatsTLS.ca_file": "PEM file of the CA that signed the NATS servers' certificates (else the system's).",
    "NatsTLS.cert_file": "Client certificate for mutual TLS (with `key_file`).",
    "NatsTLS.key_file": "Private key of the client certificate.",
    "NatsTLS.server_name": "Name to verify in the servers' certificates, if not the URL's host.",
    "ConnectionLimitsConfig.body_min_rate_bytes_per_second": "The slowest transfer rate a body is allowed: "
    "its deadline grows by its size at this rate.",
    "WorkerConfig.pseudonym_key": "Key of the pseudonyms model providers see (derived from each bot's "
    "credentials when unset; set it to keep them through a credential "
    "rotation).",
    "NatsConfig.connect_timeout_seconds": "Seconds to wait for a NATS server to accept a connection.",
    "NatsConfig.publish_timeout_seconds": "Seconds to wait for JetStream to confirm a publish (PubAck) or "
    "answer an API request.",
    "NatsConfig.dedupe_window_seconds": "A platform's retry of a message already stored within this many "
    "seconds is recognised by its message id and stored once.",
    "IngressConfig.host": "Address the public callback port listens on.",
    "IngressConfig.port": "The public callback port (`/callback/<bot id>`); `IMRELAY_PORT` overrides it.",
    "IngressConfig.max_body_bytes": "Callbacks with a larger body are answered 413.",
    "AdminConfig.host": "Address the admin port (`/metrics`, `/healthz`, `/readyz`) listens on.",
    "AdminConfig.port": "The admin port; `IMRELAY_ADMIN_PORT` overrides it (one per service on a host).",
    "WorkerConfig.concurrency": "Answers one llm-worker replica produces at the same time (each mostly "
    "waits on the model: a thousand or more fit in one process).",
    "WorkerConfig.ack_wait_seconds": "A message not acknowledged (nor marked in progress) this long is "
    "redelivered to another worker; a worker reports its messages in progress three times per ack wait, "
    "so this is about how soon a killed worker's conversations resume elsewhere.",
    "WorkerConfig.max_deliver": "Deliveries of one inbound message before it goes to the dead letters.",
    "WorkerConfig.answer_timeout_seconds": "An answer still streaming after this long is cut short (the "
    "user gets what came, with a notice).",
    "RateLimitConfig.limit": "Messages allowed per window.",
    "RateLimitConfig.window_seconds": "The window's length in seconds.",
    "SenderConfig.ack_wait_seconds": "A reply not acknowledged (nor marked in progress) this long is "
    "redelivered to another sender; a sender reports its replies in progress three times per ack wait.",
    "SenderConfig.max_deliver": "Deliveries of one reply chunk before it goes to the dead letters.",
    "SenderConfig.max_attempts": "Platform calls per delivery before it is given back for redelivery.",
    "SenderConfig.backoff_base_seconds": "First pause between retries of a failed platform call "
    "(doubled each time, with jitter).",
    "SenderConfig.backoff_max_seconds": "Longest pause between retries of a failed platform call.",
    "SenderConfig.http_timeout_seconds": "Timeout of one platform API call.",
    "SenderConfig.token_refresh_skew_seconds": "Access tokens are renewed this long before they expire, "
    "where the platform hands out a new one early.",
    "MemoryConfig.enabled": "Remember conversations (recent turns) between messages.",
    "MemoryConfig.max_turns": "Turns of a conversation sent to the model with a new message.",
    "MemoryConfig.max_chars": "Characters of remembered conversation sent to the model at most.",
    "ConnectorConfig.heartbeat_seconds": "Seconds between heartbeats on a long connection.",
    "ConnectorConfig.reconnect_max_seconds": "Longest pause between reconnection attempts (backoff).",
    "ConnectorConfig.ack_timeout_seconds": "Seconds to wait for the platform to acknowledge a frame.",
    "BackendConfig.kind": "The backend's API: `echo` (answers with the message, for trying things "
    "out), `openai` (any OpenAI-compatible chat completions API), `dify` or `fastgpt`.",
    "BackendConfig.base_url": "The API's base URL (e.g. `https://api.openai.com/v1`); required except "
    "for `echo`.",
    "BackendConfig.api_key": "The API key (write it as `${VAR}` and put the value in the environment).",
    "BackendConfig.model": "The model name (required for `openai`).",
    "BackendConfig.system_prompt": "A system prompt sent before the conversation.",
    "BackendConfig.temperature": "Sampling temperature (the backend's default when unset).",
    "BackendConfig.timeout_seconds": "Timeout of the whole backend request.",
    "BackendConfig.idle_timeout_seconds": "An answer stream silent this long is treated as failed.",
    "BackendConfig.error_message": "What the user is told when the backend fails.",
    "BotBase.id": "The bot's id: lowercase letters, digits and `-`; its callback URL is `/callback/<id>`.",
    "BotBase.backend": "The name of the backend (under `backends`) that answers this bot.",
    "BotBase.api_base": "The platform API's base URL, if not the platform's public one (private "
    "deployments, the simulator).",
    "BotBase.mode": "`callback` (the platform posts to the ingress) or `long_connection` (the connector "
    "dials the platform, where the platform has such a mode).",
    "BotBase.system_prompt": "Overrides the backend's system prompt for this bot.",
    "BotBase.temperature": "Overrides the backend's temperature for this bot.",
    "BotBase.thinking_after_seconds": "Seconds without answer text before `thinking_message` is shown.",
    "BotBase.answer_timeout_seconds": "Overrides `worker.answer_timeout_seconds` for this bot.",
    "SenderConfig.rate_limits": "Platform rate limits by scope (see the section's introduction); an entry "
    "replaces the default of the same scope.",
    "Settings.bots": "The bots, one per platform app or robot (see `bots` below).",
    "*.platform": "The bot's platform; it decides which `credentials` and other keys apply.",
}


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (point an editor's YAML language server at it)."""
    schema = c.Settings.model_json_schema(mode="validation")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "imrelay configuration",
        **{k: v for k, v in schema.items() if k != "title"},
    }


# Where the bot entries' schema sits in the Helm chart's values.schema.json.
CHART_BOTS_REF = "#/definitions/bots"


def chart_bots_schema() -> dict[str, Any]:
    """The JSON Schema of ``bots`` (the config's own union of bot models, whatever it holds), with its
    references pointing into the Helm chart's ``values.schema.json`` where it is embedded: a bad bot
    in the chart's values fails ``helm install``."""
    from pydantic import TypeAdapter

    annotation = c.Settings.model_fields["bots"].annotation
    assert annotation is not None
    schema: dict[str, Any] = TypeAdapter(annotation).json_schema(
        mode="validation", ref_template=CHART_BOTS_REF + "/$defs/{model}"
    )
    return schema


def with_chart_bots_schema(values_schema: dict[str, Any]) -> dict[str, Any]:
    """The chart's ``values.schema.json`` with its bot schema generated afresh (``imrelay config schema
    --chart PATH``)."""
    out = dict(values_schema)
    out["definitions"] = {**values_schema.get("definitions", {}), "bots": chart_bots_schema()}
    return out


def _comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the comment above its line or at its end, in the model's source."""
    out: dict[str, str] = {}
    try:
        source = inspect.getsource(model)
    except (OSError, TypeError):
        return out
    above: list[str] = []
    trailing: dict[int, str] = {}
    line_comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            text = tok.string.lstrip("#").strip()
            text = re.sub(r"^noqa: *[A-Z0-9, ]+(- *)?", "", text).strip()
            if tok.line.strip().startswith("#"):
                line_comments[tok.start[0]] = text
            else:
                trailing[tok.start[0]] = text
    for i, line in enumerate(source.splitlines(), start=1):
        m = re.match(r"^    ([a-z_][a-z0-9_]*)\s*:", line)
        if i in line_comments:
            above.append(line_comments[i])
            continue
        if m:
            parts = [" ".join(above)] if above else []
            if trailing.get(i):
                parts.append(trailing[i])
            if parts:
                out[m.group(1)] = " ".join(p[:1].upper() + p[1:] for p in parts)
        above = []
    return out


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{a.value if isinstance(a, Enum) else a}`" for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in args)
    if origin is not None and getattr(annotation, "__metadata__", None) is not None:
        return _type_name(get_args(annotation)[0])
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if origin is dict:
        return f"map of {_type_name(get_args(annotation)[1])}"
    if annotation is SecretStr:
        return "secret"
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return " \\| ".join(f"`{m.value}`" for m in annotation)
    if isinstance(annotation, type):
        return {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}.get(
            annotation.__name__, annotation.__name__
        )
    return str(annotation)


def _default(field: FieldInfo) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "**required**"
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, SecretStr):
        return '`""`' if not value.get_secret_value() else "(secret)"
    if isinstance(value, Enum):
        return f"`{value.value}`"
    if isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict | list) and not value:
        return "empty"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{value}`"


def _meaning(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    for cls in model.__mro__:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)) or name not in cls.__annotations__:
            continue
        if field.description:
            return field.description
        if f"{cls.__name__}.{name}" in MEANINGS:
            return MEANINGS[f"{cls.__name__}.{name}"]
        comment = _comments(cls).get(name)
        if comment:
            return comment
    return MEANINGS.get(f"*.{name}", "")


def _constraints(field: FieldInfo) -> str:
    bits = []
    for m in field.metadata:
        for attr, sign in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")):
            if getattr(m, attr, None) is not None:
                bits.append(f"{sign} {getattr(m, attr)}")
    return f" ({', '.join(bits)})" if bits else ""


def _nested(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (dict, list):
        return _nested(get_args(annotation)[-1])
    return None


def iter_keys(model: type[BaseModel], prefix: str) -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of every key of ``model`` under ``prefix``, nested models expanded."""
    rows: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        key = f"{prefix}.{name}" if prefix else name
        nested = _nested(field.annotation)
        if nested is not None and name != "rate_limits":
            sub = f"{key}.<name>" if get_origin(field.annotation) is dict else key
            rows += iter_keys(nested, sub)
            continue
        rows.append(
            (
                key,
                _type_name(field.annotation) + _constraints(field),
                _default(field),
                _meaning(model, name, field),
            )
        )
    return rows


def _bots() -> list[tuple[str, type[BaseModel]]]:
    return [(f"{s.title} ({', '.join(f'`{t}`' for t in s.tags)})", s.bot_model) for s in platforms.SPECS]


def _rate_scopes() -> str:
    return ", ".join(
        f"`{r.name}` ({r.meaning}, default {r.default.limit} per {r.default.window_seconds:g} s)"
        for s in platforms.SPECS
        for r in s.rate_scopes
    )


_SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("nats", c.NatsConfig, "The NATS JetStream connection and the streams' settings."),
    ("ingress", c.IngressConfig, "The public callback server."),
    ("admin", c.AdminConfig, "Every service's admin port."),
    ("worker", c.WorkerConfig, "The llm-worker."),
    (
        "sender",
        c.SenderConfig,
        "Delivery to the platforms. `rate_limits` maps a scope (see below) to "
        "`{limit, window_seconds}`, replacing that scope's default.",
    ),
    ("memory", c.MemoryConfig, "Conversation memory (kept in NATS KV)."),
    ("connector", c.ConnectorConfig, "Long connections (`imrelay-connector`)."),
]


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    out = ["| key | type | default | meaning |", "|---|---|---|---|"]
    pipe = "\\|"
    out += [f"| `{k}` | {t} | {d} | {m.replace('|', pipe)} |" for k, t, d, m in rows]
    return out


def config_reference() -> str:
    """docs/configuration.md: every key, its type, default and meaning."""
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `imrelay config reference` from the configuration models; do not edit. -->",
        "",
        "One YAML file configures every service: `IMRELAY_CONFIG` names it (default `./imrelay.yaml`), or "
        "`--config`. `${VAR}` and `${VAR:-default}` are replaced from the environment in every string "
        "value; put secrets there. `IMRELAY_NATS_URL`, `IMRELAY_PORT` and `IMRELAY_ADMIN_PORT` override "
        "`nats.url`, `ingress.port` and `admin.port`. An unknown key or a bad value stops the service "
        "with the key's path. `imrelay config schema` prints the JSON Schema (for editors), "
        "`imrelay check-config [--online]` checks a file.",
        "",
    ]
    for name, model, intro in _SECTIONS:
        out += [f"## `{name}`", "", intro, ""] + _table(iter_keys(model, name)) + [""]
        if name == "sender":
            out += [f"The platforms' limits (scopes of `sender.rate_limits`): {_rate_scopes()}.", ""]
    out += [
        "## `backends`",
        "",
        "Named LLM backends (`backends.<name>`); bots choose one by name. Default: one `echo` backend "
        "named `default`.",
        "",
    ]
    out += _table(iter_keys(c.BackendConfig, "backends.<name>")) + [""]
    out += [
        "## `bots`",
        "",
        "A list of bots; each has a `platform` and that platform's `credentials`. Keys every bot has:",
        "",
    ]
    own = {"platform", "credentials"}  # each platform's own, listed under it
    out += _table([r for r in iter_keys(BotBase, "bots[]") if r[0].split(".")[1] not in own]) + [""]
    common = set(BotBase.model_fields) - own
    for title, model in _bots():
        rows = [
            r
            for r in iter_keys(model, "bots[]")
            if r[0].split(".")[1] not in common or r[0] == "bots[].platform"
        ]
        out += [f"### {title}", ""] + _table(rows) + [""]
    return "\n".join(out)


def _size(n: int) -> str:
    mib = n / (1024 * 1024)
    return f"{mib:g} MB" if mib >= 1 else f"{n // 1024} KB"


def media_table() -> str:
    """The README's media table: what each platform's package fetches from messages and sends, with its
    limits (from each ``PlatformSpec.media``)."""
    from .media import MediaKind
    from .platforms import SPECS

    order = list(MediaKind)

    def kinds(found: frozenset[MediaKind]) -> str:
        return ", ".join(k.value for k in order if k in found) or "—"

    def limits(table: dict[MediaKind, int]) -> str:
        return ", ".join(f"{k.value} {_size(table[k])}" for k in order if k in table) or "—"

    rows = [
        "| platform | receives (from users) | sends (in answers) | upload limits | download limits | notes |",
        "|---|---|---|---|---|---|",
    ]
    for spec in SPECS:
        m = spec.media
        rows.append(
            f"| {spec.title} | {kinds(m.inbound)} | {kinds(m.outbound)} | {limits(m.limits)} "
            f"| {limits(m.inbound_limits)} | {m.note or '—'} |"
        )
    return "\n".join(rows) + "\n"
