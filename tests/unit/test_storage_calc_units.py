"""storage_calc.units: decimal and binary sizes, 1e6-style counts, clear errors."""

import pytest

from storage_calc import units
from storage_calc.units import UnitError


@pytest.mark.parametrize("text, expected", [
    ("500KB", 500_000), ("500 KB", 500_000), ("5MB", 5_000_000), ("20 MB", 20_000_000),
    ("1GB", 10**9), ("1TB", 10**12), ("1PB", 10**15), ("0.4 GB", 400_000_000), ("400", 400),
    ("12B", 12), ("1e3", 1000), ("1e3KB", 10**6), ("1.5 kb", 1500), (".5GB", 500_000_000),
    ("1KiB", 1024), ("1 MiB", 2**20), ("1.5GiB", int(1.5 * 2**30)), ("2TiB", 2 * 2**40),
    ("1mib", 2**20), ("1,000 MB", 10**9), ("1_000B", 1000),
])
def test_parse_size(text, expected):
    assert units.parse_size(text) == expected


@pytest.mark.parametrize("text", ["5XB", "5 bytes", "1 Mb/s", "GB", "", "abc", "-5MB", "1e999GB",
                                  "5 M B"])
def test_parse_size_rejects(text):
    with pytest.raises(UnitError):
        units.parse_size(text)


def test_unknown_unit_message_names_the_unit():
    with pytest.raises(UnitError, match="unknown unit 'XB'"):
        units.parse_size("5XB")


@pytest.mark.parametrize("text, expected", [
    ("1e6", 1_000_000), ("1E6", 1_000_000), ("5e4", 50_000), ("2.5e3", 2500), ("100000", 100_000),
    ("1,000,000", 1_000_000), ("1_000_000", 1_000_000), ("0", 0), (" 7 ", 7),
])
def test_parse_count(text, expected):
    assert units.parse_count(text) == expected


@pytest.mark.parametrize("text, message", [
    ("-5", "negative"), ("-1e6", "negative"), ("abc", "not a number"), ("1.5", "whole"),
    ("nan", "finite"), ("inf", "finite"), ("", "not a number"), ("10MB", "not a number"),
])
def test_parse_count_rejects(text, message):
    with pytest.raises(UnitError, match=message):
        units.parse_count(text)


@pytest.mark.parametrize("text, expected", [("0.4", 0.4), ("40%", 0.4), ("1", 1.0), ("100%", 1.0)])
def test_parse_fraction(text, expected):
    assert units.parse_fraction(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["0", "1.5", "-0.1", "150%", "x"])
def test_parse_fraction_rejects(text):
    with pytest.raises(UnitError):
        units.parse_fraction(text)


@pytest.mark.parametrize("n, unit, expected", [
    (400_000_000, "GB", "0.4 GB"), (50 * 10**9, "GB", "50 GB"), (250 * 10**9, "GB", "250 GB"),
    (400 * 10**9, "GB", "400 GB"), (700_400_000_000, "GB", "700.4 GB"), (0, "GB", "0 GB"),
    (2**30, "GiB", "1 GiB"), (1_234_500 * 10**9, "GB", "1,234,500 GB"),
    (400, None, "400 B"), (500_000, None, "500 KB"), (5 * 10**6, None, "5 MB"),
    (1_008_599_040, None, "1.01 GB"), (10**12, None, "1 TB"), (999_100_000, None, "999.1 MB"),
    (400_000, "GB", "0.0004 GB"),
])
def test_format_size(n, unit, expected):
    assert units.format_size(n, unit) == expected


def test_format_helpers():
    assert units.format_count(1_170_000) == "1,170,000"
    assert units.format_duration(30) == "30 s"
    assert units.format_duration(4843) == "1.35 h"
    assert units.format_duration(3 * 86400) == "3 days"
    assert units.format_flops(4.943e16) == "4.94e16 FLOPs"
    assert units.format_flops(6e20) == "6e20 FLOPs"
