"""The platform registry is complete: every registered platform has what every service, the simulator, the
demo configuration and the chart's schema need, and nothing outside a platform's package names it.

``missing_pieces`` names each gap; the real registry must have none, and a platform registered with a gap
is reported (so adding a platform half-way fails here, not at run time)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, get_args

import httpx
import pytest
import yaml

from imrelay import platforms
from imrelay.bots import BotBase
from imrelay.config import Settings, parse_settings
from imrelay.delivery import DeliveryContext
from imrelay.devconfig import DEV_CONFIG
from imrelay.platforms.spec import PlatformSpec, SimMessage
from imrelay_ingress.app import create_app

from ..helpers import FakePublisher, FakeReplayGuard, FakeStreamStore

ROOT = Path(__file__).parents[2]
CHART_SCHEMA = ROOT / "deploy" / "helm" / "imrelay" / "values.schema.json"
PACKAGES = ROOT / "shared" / "src" / "imrelay" / "platforms"
SOURCES = [ROOT / "shared" / "src", *sorted((ROOT / "services").glob("*/src"))]


def chart_platform_tags(schema: dict[str, Any]) -> set[str]:
    """Every value the chart's schema allows for a bot's ``platform`` (enums and consts, wherever the bot
    schema keeps them)."""
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            platform = (node.get("properties") or {}).get("platform")
            if isinstance(platform, dict):
                found.update(str(v) for v in platform.get("enum", []))
                if "const" in platform:
                    found.add(str(platform["const"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema.get("definitions", {}).get("bots", schema))
    return found


def literal_values(annotation: Any) -> set[str]:
    return {str(v) for v in get_args(annotation)}


def missing_pieces(
    specs: tuple[PlatformSpec[Any], ...], demo: list[BotBase], chart_tags: set[str]
) -> list[str]:
    """What each platform lacks, in words (empty: complete)."""
    problems: list[str] = []
    demo_tags = {bot.platform for bot in demo}
    for spec in specs:
        name = spec.title
        tags = set(spec.tags)
        if not tags:
            problems.append(f"{name}: no platform tag")
        if literal_values(spec.bot_model.model_fields["platform"].annotation) != tags:
            problems.append(f"{name}: the bot model's platform tags differ from the spec's")
        if literal_values(spec.reply_handle.model_fields["kind"].annotation) != tags:
            problems.append(f"{name}: the reply handle's kinds differ from the spec's tags")
        problems += [f"{name}: no default API address for {t}" for t in sorted(tags - set(spec.api_base))]
        problems += [f"{name}: no demo bot for {t} (imrelay dev)" for t in sorted(tags - demo_tags)]
        problems += [f"{name}: the chart's schema refuses {t}" for t in sorted(tags - chart_tags)]
        if spec.capabilities.callbacks and spec.sim_request is None:
            problems.append(f"{name}: the simulator cannot send its callbacks")
        if spec.sim_routes is None:
            problems.append(f"{name}: the simulator does not play its API")
        if spec.capabilities.long_connection is not None and spec.sim_push is None:
            problems.append(f"{name}: the simulator cannot push to its long connection")
        for scope in spec.rate_scopes:
            if scope.name.split(".")[0] not in tags:
                problems.append(f"{name}: rate scope {scope.name} is not named after its platform")
    return problems


def demo_bots() -> list[BotBase]:
    return list(parse_settings(yaml.safe_load(DEV_CONFIG), {}).bots)


def test_every_platform_is_complete() -> None:
    chart = chart_platform_tags(json.loads(CHART_SCHEMA.read_text(encoding="utf-8")))
    assert missing_pieces(platforms.SPECS, demo_bots(), chart) == []


def test_a_platform_registered_half_way_is_named() -> None:
    spec = platforms.spec("qq")
    half = replace(spec, sim_routes=None, sim_request=None)
    chart = chart_platform_tags(json.loads(CHART_SCHEMA.read_text(encoding="utf-8"))) - {"qq"}
    demo = [bot for bot in demo_bots() if bot.platform != "qq"]
    assert missing_pieces((half,), demo, chart) == [
        "QQ: no demo bot for qq (imrelay dev)",
        "QQ: the chart's schema refuses qq",
        "QQ: the simulator cannot send its callbacks",
        "QQ: the simulator does not play its API",
    ]


def test_tags_are_unique_and_every_tag_resolves() -> None:
    tags = [t for s in platforms.SPECS for t in s.tags]
    assert len(tags) == len(set(tags)) == len(platforms.tags())
    for tag in tags:
        assert tag in platforms.spec(tag).tags
    with pytest.raises(ValueError, match="unknown platform"):
        platforms.spec("telegram")


def _settings() -> Settings:
    return parse_settings(yaml.safe_load(DEV_CONFIG), {"IMRELAY_SIM_URL": "http://sim.test"})


@pytest.mark.parametrize("bot_id", [b.id for b in demo_bots()])
def test_every_service_serves_every_demo_bot(bot_id: str) -> None:
    """The ingress has its adapter, the sender its delivery, the token cache its key where it needs one."""
    settings = _settings()
    bot = settings.bot(bot_id)
    assert bot is not None
    spec = platforms.spec_for(bot)
    assert callable(platforms.adapter_for(bot).handle)
    ctx = DeliveryContext(
        settings=settings,
        client=httpx.AsyncClient(),
        tokens=None,  # type: ignore[arg-type]
        deliveries=None,
        answer_streams=FakeStreamStore(),
    )
    delivery = platforms.delivery_for(bot, ctx)
    assert delivery.bot_id == bot.id and callable(delivery.send) and callable(delivery.render)
    assert (spec.token_key(bot) is not None) == spec.capabilities.needs_token
    if bot.mode == "long_connection":
        assert spec.connection is not None and spec.sim_push is not None


def _callback_bots() -> Iterator[Any]:
    for bot in demo_bots():
        if bot.mode == "callback":
            yield pytest.param(bot.id, id=bot.id)


@pytest.mark.parametrize("bot_id", list(_callback_bots()))
async def test_the_simulator_and_the_ingress_agree_for_every_platform(bot_id: str) -> None:
    """A message the simulator sends as the platform would is verified, accepted and stored by the ingress."""
    settings = _settings()
    bot = settings.bot(bot_id)
    assert bot is not None
    simulate = platforms.spec_for(bot).sim_request
    assert simulate is not None
    now = time.time()
    req = simulate(
        bot, SimMessage(text="hello", user="alice", msg_id="4242", now=now, sim_url="http://sim.test")
    )
    publisher = FakePublisher()
    app = create_app(
        settings, publisher, clock=lambda: now, streams=FakeStreamStore(), replay=FakeReplayGuard()
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://ingress") as client:
        resp = await client.post(
            f"/callback/{bot.id}" + (f"?{req.query}" if req.query else ""),
            content=req.body,
            headers=dict(req.headers),
        )
    assert resp.status_code == 200, resp.text
    [stored] = publisher.published
    assert stored.bot_id == bot.id and stored.platform == bot.platform and stored.text.endswith("hello")
    assert stored.reply_handle is not None and stored.reply_handle.kind == bot.platform


NAMES = re.compile(
    "|".join(
        sorted(
            {t for s in platforms.SPECS for t in s.tags} | {"wecom", "feishu", "lark", "dingtalk", "discord"}
        )
    ),
    re.IGNORECASE,
)


def files_naming_a_platform() -> dict[str, list[str]]:
    """Non-test Python outside the platforms' packages that names a platform: tag -> files."""
    found: dict[str, list[str]] = {}
    for base in SOURCES:
        for path in sorted(base.rglob("*.py")):
            if PACKAGES in path.parents:
                continue
            for name in {m.group(0).lower() for m in NAMES.finditer(path.read_text(encoding="utf-8"))}:
                found.setdefault(name, []).append(str(path.relative_to(ROOT)))
    return found


def test_no_platform_is_named_outside_its_package() -> None:
    assert files_naming_a_platform() == {}


def test_the_chart_reader_finds_enums_and_consts() -> None:
    schema = {
        "definitions": {
            "bots": {
                "items": {
                    "oneOf": [
                        {"properties": {"platform": {"const": "a"}}},
                        {"properties": {"platform": {"enum": ["b", "c"]}}},
                    ]
                }
            }
        }
    }
    assert chart_platform_tags(schema) == {"a", "b", "c"}


def test_literal_values_reads_a_literal() -> None:
    assert literal_values(Literal["x", "y"]) == {"x", "y"}
