"""docs/api.md's reference is what the edge's OpenAPI document says, and keeps the hand-written rest."""

from __future__ import annotations

from nexus_tools.apidoc import BEGIN, END, edge_openapi, render, type_of, updated
from tests.support.env import ROOT

PAGE = ROOT / "docs" / "api.md"


def test_the_committed_page_is_the_generated_one() -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert page == updated(page, render(edge_openapi())), (
        "docs/api.md is out of date with the edge's routes: run `.venv/bin/python -m nexus_tools.apidoc`"
    )


def test_every_route_and_schema_is_on_the_page() -> None:
    doc = edge_openapi()
    block = render(doc)
    for path, ops in doc["paths"].items():
        for method in ops:
            assert f"### `{method.upper()} {path}`" in block
    for name in doc["components"]["schemas"]:
        assert f"\n### {name}\n" in block


def test_an_update_keeps_what_is_written_by_hand_around_the_block() -> None:
    page = f"# API\n\nby hand before\n\n{BEGIN}\nold\n{END}\n\n## OIP binary extension\n\nby hand after\n"
    new = updated(page, f"{BEGIN}\nnew\n{END}\n")
    assert new == f"# API\n\nby hand before\n\n{BEGIN}\nnew\n{END}\n\n## OIP binary extension\n\nby hand after\n"
    assert updated(new, f"{BEGIN}\nnew\n{END}\n") == new  # idempotent
    # a page without the block gets it at the end
    assert updated("# API\n", f"{BEGIN}\nx\n{END}\n") == f"# API\n\n{BEGIN}\nx\n{END}\n"


def test_types_read_like_the_schema() -> None:
    assert type_of({"anyOf": [{"$ref": "#/components/schemas/Foo"}, {"type": "null"}]}) == "[Foo](#foo) or null"
    nested = {"type": "array", "items": {"anyOf": [{"type": "integer"}, {"type": "string"}]}}
    assert type_of(nested) == "array of (integer or string)"
    assert type_of({"const": "funnel"}) == '`"funnel"`'
