"""The create form offers the models the installed SDK knows, defaulting to a current one;
a model it does not know is still accepted, with a note on the confirmation."""

from __future__ import annotations

import json
import typing

from anthropic.types import Model

from bot.doors.slack.messages import Messages
from bot.services.models import current_models, is_known, known_models
from bot.settings import DEFAULT_MODEL
from bot.store.tables import Routine


def test_the_default_is_a_model_the_sdk_knows_and_the_form_lists_current_ones() -> None:
    listed = {a for part in typing.get_args(Model) for a in typing.get_args(part)}
    assert set(known_models()) == {a for a in listed if isinstance(a, str)}
    assert is_known(DEFAULT_MODEL) and DEFAULT_MODEL in current_models()
    assert not any(m[-8:].isdigit() for m in current_models())  # aliases, not snapshots
    form = Messages().render("create_modal.json.j2", channel_id="", default_model=DEFAULT_MODEL,
                             models=current_models(), default_timeout=1800, min_timeout=60,
                             max_timeout=14400)
    (model,) = [b for b in form["blocks"] if b.get("block_id") == "model"]
    assert model["element"]["initial_value"] == DEFAULT_MODEL
    assert all(m in model["hint"]["text"] for m in current_models())


def test_an_unknown_model_is_accepted_with_a_note() -> None:
    routine = Routine(name="n", prompt="p", repo_url="https://github.com/o/r", channel_id="C1",
                      model="claude-next-9", timeout_seconds=60, max_turns=5, created_by="U1")
    noted = json.dumps(Messages().render("routine_created.json.j2", routine=routine,
                                         actor="U1", model_known=is_known(routine.model)))
    assert "does not know the model" in noted and "claude-next-9" in noted
    routine.model = DEFAULT_MODEL
    plain = json.dumps(Messages().render("routine_created.json.j2", routine=routine,
                                         actor="U1", model_known=is_known(routine.model)))
    assert "does not know" not in plain
