"""sampleattn.tables: the one table formatter (plain columns for terminals, markdown for pages)."""

from __future__ import annotations

import pytest

from sampleattn.tables import format_table, print_table


def test_plain_columns_are_padded_to_their_widest_cell():
    text = format_table(("LENGTH", "ALPHA"), [(131072, 0.95), ("1m", "-")])
    assert text.splitlines() == ["LENGTH  ALPHA", "------  -----", "131072  0.95", "1m      -"]


def test_markdown_aligns_the_columns_it_is_told_to():
    text = format_table(("method", "density"), [("sampled", "0.205")], markdown=True, align="lr")
    assert text.splitlines() == ["| method | density |", "|---|---:|", "| sampled | 0.205 |"]


def test_a_row_of_the_wrong_width_is_refused():
    with pytest.raises(ValueError, match="a row has 1 cells for 2 headers"):
        format_table(("a", "b"), [("x",)])
    with pytest.raises(ValueError, match="names 1 columns for 2 headers"):
        format_table(("a", "b"), [], markdown=True, align="l")


def test_print_table_puts_its_title_first(capsys):
    print_table("Targets", ("target", "met"), [("1M >= 10x cuDNN", "NOT met")])
    assert capsys.readouterr().out == "\nTargets\n| target | met |\n|---|---|\n| 1M >= 10x cuDNN | NOT met |\n"
