import pytest

from spbench.errors import SpbenchError
from spbench.parsing import parse_budget, parse_grid, parse_params, parse_seq


@pytest.mark.parametrize(
    "text,value",
    [("32768", 32768), ("110k", 110_000), ("110K", 110_000), ("1.5M", 1_500_000), ("128Ki", 131_072), ("1Mi", 1_048_576), (" 4k ", 4000), (7, 7)],
)
def test_parse_seq(text, value):
    assert parse_seq(text) == value


@pytest.mark.parametrize("text", ["", "abc", "10q", "1.5", "-3", "0", "1.0001k", "k"])
def test_parse_seq_rejects(text):
    with pytest.raises(SpbenchError):
        parse_seq(text)


def test_parse_budget_and_grid_and_params():
    assert parse_budget("0.1") == 0.1
    for bad in ("0", "1.5", "-0.1", "x"):
        with pytest.raises(SpbenchError):
            parse_budget(bad)
    assert parse_grid("21x45x80") == (21, 45, 80)
    with pytest.raises(SpbenchError):
        parse_grid("21x45")
    assert parse_params(["tau=0.9", "mode=cdf", "sink=true", "n=3", "mix=1:0.1,2:0.05"]) == {"tau": 0.9, "mode": "cdf", "sink": True, "n": 3, "mix": "1:0.1,2:0.05"}
    with pytest.raises(SpbenchError):
        parse_params(["tau"])
