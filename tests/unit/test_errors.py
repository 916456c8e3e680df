from __future__ import annotations

import pytest

from imrelay import errors


@pytest.mark.parametrize("name", errors.__all__)
def test_every_error_is_drawn_in_the_tree_and_derives_from_the_base(name: str) -> None:
    cls = getattr(errors, name)
    assert issubclass(cls, errors.ImrelayError)
    assert f" {name} " in (errors.__doc__ or "") or f" {name}\n" in (errors.__doc__ or "")


def test_the_ingress_refuses_a_large_body_with_413() -> None:
    err = errors.BodyTooLarge()
    assert isinstance(err, errors.CallbackError) and err.status_code == 413


def test_a_token_endpoint_cooling_down_is_retried_like_any_transient_failure() -> None:
    err = errors.TokenUnavailable("token", "cooldown", "backing off", retry_after=3.0)
    assert isinstance(err, errors.TransientUpstreamError) and err.retry_after == 3.0
