"""Tests for hiddenite.texttable."""

from hiddenite.texttable import text_table


def test_alignment_rules_and_total():
    lines = text_table(("name", "n"), [("a", 1), ("bbb", 22)], ("total", 23), left=(0,))
    assert lines == [
        "name    n",
        "---------",
        "a       1",
        "bbb    22",
        "---------",
        "total  23",
    ]


def test_without_total_and_trailing_blanks_dropped():
    assert text_table(("x", "y"), [("", "")], left=(0, 1)) == ["x  y", "----", ""]
