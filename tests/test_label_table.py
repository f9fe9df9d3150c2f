"""The form-label table (parsers/labels.toml) says one clear thing: every label means one known field, no
label is listed twice once folded, and every heading opens a known block. A broken table is refused at import
with every problem named."""

from __future__ import annotations

from importlib import resources

import pytest

from subdomaind.parsers.fields import EXTRA_FIELDS, LABEL_FILE, LabelTableError, load_label_table, match_label
from subdomaind.parsers.model import REQUEST_FIELDS


def shipped() -> str:
    return resources.files("parsers").joinpath(LABEL_FILE).read_text("utf-8")


def test_the_shipped_table_is_valid_and_names_every_field_it_can() -> None:
    labels, headings = load_label_table(shipped())
    fields = {entry.field for _label, entry in labels}
    assert fields <= {*REQUEST_FIELDS, *EXTRA_FIELDS}
    assert set(REQUEST_FIELDS) <= fields  # every request field has labels
    assert len(labels) > 300 and len(headings) > 40
    assert set(headings.values()) == {"tech", "admin", "pic", "unit", "-"}


def test_the_matcher_uses_the_table() -> None:
    entry = match_label("Nama Sub Domain yang diajukan")
    assert entry is not None and entry.field == "subdomain"
    heading = match_label("B. Penanggung Jawab Teknis")
    assert heading is not None and heading.heading == "tech"


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        ('[[label]]\nfield = "unit"\nlabels = ["Instansi"]\n[[label]]\nfield = "subdomain"\nlabels = ["INSTANSI:"]\n',
         "label 'INSTANSI:' is already listed as 'Instansi'"),
        ('[[label]]\nfield = "pic_email"\nlabels = ["Email", "E-mail"]\n', "label 'E-mail' is already listed as 'Email'"),
        ('[[label]]\nfield = "subdomian"\nlabels = ["Sub Domain"]\n', "field 'subdomian' is not a field the parser"),
        ('[[label]]\nfield = "pic_name"\ngroup = "teknis"\nlabels = ["PJ"]\n', "group 'teknis' is not one of"),
        ('[[label]]\nfield = "pic_name"\npriority = 0\nlabels = ["PJ"]\n', "priority must be a whole number"),
        ('[[label]]\nfield = "pic_name"\nlabels = []\n', "label #1: no labels"),
        ('[[label]]\nfield = "pic_name"\nlabel = ["PJ"]\n', "unknown keys ['label']"),
        ('[headings]\n"Data PIC" = "pj"\n', "heading 'Data PIC': block 'pj' is not one of"),
        ('[headings]\n"Data PIC" = "pic"\n"DATA PIC." = "pic"\n', "listed twice once folded"),
    ],
)
def test_a_broken_table_is_refused_with_its_problem_named(table: str, problem: str) -> None:
    with pytest.raises(LabelTableError) as caught:
        load_label_table(table)
    assert problem in str(caught.value)
