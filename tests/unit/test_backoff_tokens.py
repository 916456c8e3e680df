from __future__ import annotations

import pytest

from imrelay.delivery.tokens import TokenRecord, effective_skew, is_usable, needs_refresh
from imrelay_sender.backoff import backoff_delay


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 0.5), (2, 1.0), (3, 2.0), (10, 30.0)])
def test_backoff_ceiling_doubles_up_to_cap(attempt: int, ceiling: float) -> None:
    assert backoff_delay(attempt, 0.5, 30.0, rand=lambda: 1.0) == ceiling
    assert backoff_delay(attempt, 0.5, 30.0, rand=lambda: 0.0) == 0.0


def test_backoff_honours_retry_after() -> None:
    assert backoff_delay(1, 0.5, 30.0, retry_after=7.0, rand=lambda: 0.5) == 7.0
    with pytest.raises(ValueError):
        backoff_delay(0, 1, 1)


def rec(fetched: float, lifetime: float) -> TokenRecord:
    return TokenRecord(token="t", expires_at=fetched + lifetime, fetched_at=fetched)


def test_refresh_window() -> None:
    r = rec(1000, 7200)
    assert not needs_refresh(r, 1000 + 7200 - 301, skew=300)
    assert needs_refresh(r, 1000 + 7200 - 300, skew=300)
    assert needs_refresh(None, 0, skew=300)


def test_skew_never_more_than_half_the_lifetime() -> None:
    r = rec(0, 10)
    assert effective_skew(r, 300) == 5
    assert not needs_refresh(r, 4.9, skew=300)
    assert needs_refresh(r, 5.0, skew=300)


def test_usable_until_just_before_expiry() -> None:
    r = rec(0, 7200)
    assert is_usable(r, 7194)
    assert not is_usable(r, 7196)
    assert not is_usable(None, 0)


def test_record_json_round_trip_and_repr() -> None:
    r = TokenRecord(token="secret-token", expires_at=10.0, fetched_at=1.0)
    assert TokenRecord.from_json(r.to_json()) == r
    assert TokenRecord.from_json(b"not json") is None
    assert "secret-token" not in repr(r)


def test_renew_early_refreshes_ahead_of_expiry() -> None:
    from imrelay.delivery.tokens import renew_at

    r = renew_at("a", 7200, 1000, None, renew_early=True, skew=300)
    assert (r.expires_at, r.renew_at) == (8200, 7900)
    assert not needs_refresh(r, 7899, skew=300) and needs_refresh(r, 7900, skew=300)


def test_wecom_style_tokens_are_fetched_at_expiry_only() -> None:
    from imrelay.delivery.tokens import renew_at

    r = renew_at("a", 7200, 1000, None, renew_early=False, skew=300)
    assert r.renew_at == 8200
    assert not needs_refresh(r, 8199.9, skew=300) and needs_refresh(r, 8200, skew=300)


def test_the_same_token_back_is_not_asked_for_again_before_it_expires() -> None:
    from imrelay.delivery.tokens import renew_at

    first = renew_at("a", 7200, 1000, None, renew_early=True, skew=300)
    again = renew_at("a", 300, 7900, first, renew_early=True, skew=300)  # the platform's answer
    assert again.renew_at == first.expires_at == 8200
    assert not needs_refresh(again, 8100, skew=300)
    new = renew_at("b", 7200, 8200, again, renew_early=True, skew=300)
    assert new.token == "b" and new.renew_at == 8200 + 7200 - 300


def test_token_endpoint_cooldown_grows_and_caps() -> None:
    from imrelay.delivery.tokens import cooldown_after

    assert [cooldown_after(n, 1.0, 60.0) for n in (1, 2, 3, 7, 20)] == [1.0, 2.0, 4.0, 60.0, 60.0]
