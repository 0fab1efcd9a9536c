import pytest

from kmemopt.errors import UsageError
from kmemopt.units import format_bytes, parse_count, parse_percent, parse_size


@pytest.mark.parametrize(
    "text, expected",
    [
        ("4096", 4096),
        ("50 MB", 50_000_000),
        ("50MB", 50_000_000),
        ("1.5 GiB", 1_610_612_736),
        ("2gib", 2 * 1024**3),
        ("10 KiB", 10_240),
        ("1e3", 1000),
        ("7 B", 7),
        (123, 123),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "5 XB", "-3 MB", "1.2.3 GB", "GB"])
def test_parse_size_rejects_with_the_value_in_the_message(text):
    with pytest.raises(UsageError) as err:
        parse_size(text)
    assert repr(text) in str(err.value) or text == ""


@pytest.mark.parametrize(
    "text, expected", [("25M", 25_000_000), ("1.5B", 1_500_000_000), ("300k", 300_000), ("12", 12)]
)
def test_parse_count(text, expected):
    assert parse_count(text) == expected


def test_parse_percent():
    assert parse_percent("5%") == pytest.approx(0.05)
    assert parse_percent("0.1") == pytest.approx(0.1)
    with pytest.raises(UsageError):
        parse_percent("five")


def test_format_bytes():
    assert format_bytes(0) == "0 B"
    assert format_bytes(1023) == "1023 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 1024**3) == "3.0 GiB"
    assert format_bytes(3 * 1024**2, "KiB") == "3,072.0 KiB"
