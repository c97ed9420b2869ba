"""Without a template of its own, a routine's payload is mapped by a shortcut: it must give
exactly what the sandboxed Jinja render of `DEFAULT_TEMPLATE` gives."""

from __future__ import annotations

from typing import Any

import pytest

from bot.core import payload as payloads

PAYLOADS: list[Any] = [
    {}, [], None, 0, -1.5, True, "plain", {"n": 1},
    {"title": "<script>alert('x')</script> & co", "body": "é ü 漢字 😀"},
    {"z": [1, {"b": None, "a": [True, False]}], "a": {"nested": {"deep": ["x", 2.25]}}},
    {"quote": "\"double\" and 'single'", "newline": "a\nb\tc", "bs": "back\\slash"},
    ["list", "at", {"top": "level"}],
]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_the_default_mapping_is_the_default_template_rendered(payload: Any) -> None:
    by_jinja = payloads._compiled(payloads.DEFAULT_TEMPLATE).render(payload=payload)
    assert payloads.render("", payload) == by_jinja


def test_a_template_of_its_own_still_goes_through_the_sandbox() -> None:
    with pytest.raises(payloads.PayloadRejected):
        payloads.render("{{ payload.__class__.__mro__ }}", {"a": 1})
    assert payloads.render("{{ payload.a }}", {"a": "<b>"}) == "<b>"
