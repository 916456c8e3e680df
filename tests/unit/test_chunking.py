from __future__ import annotations

import random

import pytest

from imrelay.delivery.chunking import split_chars, split_utf8


def check(text: str, limit: int) -> list[str]:
    parts = split_utf8(text, limit)
    assert "".join(parts) == text
    assert all(0 < len(p.encode("utf-8")) <= limit for p in parts)
    return parts


def test_short_text_is_one_part() -> None:
    assert check("hello", 2048) == ["hello"]
    assert split_utf8("", 2048) == []


def test_3000_bytes_become_two_parts() -> None:
    text = ("word " * 600)[:3000]
    parts = check(text, 2048)
    assert len(parts) == 2


def test_never_splits_inside_a_character() -> None:
    text = "你好世界" * 400  # 3 bytes each, no spaces
    parts = check(text, 2048)
    assert len(parts) == 3
    assert all(len(p.encode()) % 3 == 0 for p in parts)


def test_prefers_paragraph_then_line_then_space() -> None:
    para = "a" * 1800 + "\n\n" + "b" * 400
    assert check(para, 2048)[0].endswith("\n\n")
    line = "a" * 1800 + "\n" + "b" * 100 + " " + "c" * 400
    assert check(line, 2048)[0].endswith("\n")
    space = "a" * 1900 + " " + "b" * 400
    assert check(space, 2048)[0].endswith(" ")


def test_ignores_a_break_too_early_in_the_window() -> None:
    text = "a" * 10 + " " + "b" * 3000
    parts = check(text, 2048)
    assert len(parts[0].encode()) == 2048


@pytest.mark.parametrize("seed", range(20))
def test_random_mixed_text(seed: int) -> None:
    rng = random.Random(seed)
    alphabet = ["a", "é", "你", "😀", " ", "\n", ".", "\u0301"]
    text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 5000)))
    check(text, rng.choice([4, 7, 64, 2048, 4096]))


def test_limit_must_fit_a_character() -> None:
    with pytest.raises(ValueError):
        split_utf8("x", 3)


def test_split_by_characters() -> None:
    text = "😀" * 2500 + " tail"
    parts = split_chars(text, 2000)
    assert "".join(parts) == text and all(len(p) <= 2000 for p in parts) and len(parts) == 2
    assert split_chars("short", 2000) == ["short"]
