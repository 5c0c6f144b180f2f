"""EoT: a '%' inside an equation is a percent (20% = 20/100), never a silent cut of the line;
'%' starting a line is still a comment (issue 9)."""

from __future__ import annotations

import pytest

from distill.answers import answers_match
from distill.sandbox import Rejected, parse_eot, solve_eot


def test_percent_after_a_number_is_divided_by_100():
    # used to parse as `discount = 20` and answer 20
    result = solve_eot("% a shirt costs $50, 20% off\nprice = 50\ndiscount = 20% * price\nans = price - discount")
    assert result.ok, result.error
    assert answers_match(str(result.value), "40", "number")


@pytest.mark.parametrize(
    "line,expected",
    [
        ("ans = 12.5% * 80", "10"),
        ("ans = 80 * 25 %", "20"),  # space before '%'
        ("ans = 1,000% 3", "30"),
    ],
)  # implicit multiplication
def test_percent_forms(line, expected):
    result = solve_eot(line)
    assert result.ok, result.error
    assert answers_match(str(result.value), expected, "number")


def test_percent_parses_to_a_division_by_100():
    assert parse_eot("ans = 20% price")[0][1] == ["mul", ["div", ["num", "20"], ["num", "100"]], ["var", "price"]]


def test_real_gsm8k_style_percent_system():
    # "There are 80% more purple flowers than yellow ones; 25% as many green as yellow + purple."
    text = (
        "% Ten of the flowers are yellow\nyellow = 10\n"
        "% There are 80% more purple flowers than yellow ones\npurple = yellow + 80% * yellow\n"
        "% There are 25% as many green flowers as yellow and purple flowers\n"
        "green = 25% (yellow + purple)\nans = yellow + purple + green"
    )
    result = solve_eot(text)
    assert result.ok, result.error
    assert answers_match(str(result.value), "35", "number")


def test_percent_anywhere_else_is_rejected_with_a_message():
    for text in ("price = 50\nans = price %", "x = 4\nans = (x + 1)% * 10", "ans = 5 * %3", "ans = 2 %% 3"):
        with pytest.raises(Rejected, match="'%'"):
            parse_eot(text)
        result = solve_eot(text)
        assert not result.ok and "'%'" in result.error


def test_comment_lines_are_skipped_and_percent_lines_kept_whole():
    assert parse_eot("% ans = 1 and 20% more\n  % indented comment = 3\nans = 2%") == [
        [["var", "ans"], ["div", ["num", "2"], ["num", "100"]]]
    ]
