"""docs/fields.md is the declared wire account (quotagate.wire), rendered: regenerate it with
``python -m quotagate.wire.tables > docs/fields.md`` when a declaration changes."""

from __future__ import annotations

from pathlib import Path

from quotagate.wire import tables
from quotagate.wire.schema import Action

DOC = Path(__file__).resolve().parents[2] / "docs" / "fields.md"


def test_docs_fields_md_is_the_declaration_rendered():
    assert DOC.read_text() == tables.render(), "regenerate: python -m quotagate.wire.tables > docs/fields.md"


def test_every_top_level_field_of_every_endpoint_has_one_disposition_per_target_type():
    for _, _, declaration in tables.ENDPOINTS:
        for name, field in declaration.fields.items():
            assert field.targets is not None, name
            for disposition in field.targets.all():
                assert isinstance(disposition.action, Action), name
                if disposition.action in (Action.DROPPED, Action.REFUSED, Action.PRICED, Action.BOUNDED):
                    assert disposition.note, f"{name}: a {disposition.action} field says why (or which modifier)"
