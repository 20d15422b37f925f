"""The check of a typed answer while the person is still on the task (Label Studio interactive
pre-annotation, like :mod:`xmodal.labelstudio.page_search`).

Under "None of these" the person writes a description or pastes an id (``description`` on an
image task, ``match_id`` on a text task). The box has ``smartOnly="true"``: when an entry is added
(Enter, Shift+Enter or the box's Add button) Label Studio POSTs ``/predict`` with the entry in
``params.context.result``, and the backend answers with what the entry will count as, judged by the
same :func:`~xmodal.labelstudio.annotations.interpret` the webhook uses (one copy of the rules):

- a pair (an id of the project, a project text pasted whole, a written description): one line in
  ``check`` saying so;
- a problem (an id-like text that is no id, a description with no words or too long): the line
  says why in the words the team would see later, and the entry is taken out of the box, so that
  the box is empty again and Label Studio's ``required`` check refuses the Submit until the person
  writes something that counts (``label_config/``).

An entry typed and submitted at once (no Enter) reaches the backend only with the annotation:
what is wrong in it is then a problem flagged on the task, as before.
"""

from __future__ import annotations

from xmodal.labelstudio.annotations import AnnotationEvent, interpret
from xmodal.labelstudio.page_search import CHECK_FIELD
from xmodal.labelstudio.tasks import NONE_CHOICE

TEXTAREA = {"image": "description", "text": "match_id"}   # each shipped config's box for a typed answer
TYPED_FIELDS = tuple(TEXTAREA.values())
SOURCES = {"pasted_id": "the id of a text of this project", "pasted_text": "a text of this project",
           "written": "a description of the image", "choice": "an option"}


def typed_entry(context) -> tuple[str, str] | None:
    """``(field, text)``: the last entry of a typed-answer box in ``/predict``'s ``params.context``,
    or None when the context has none."""
    if not isinstance(context, dict) or not isinstance(context.get("result"), list):
        return None
    for region in reversed(context["result"]):
        if isinstance(region, dict) and region.get("from_name") in TYPED_FIELDS \
                and isinstance(region.get("value"), dict):
            texts = region["value"].get("text")
            texts = [texts] if isinstance(texts, str) else texts
            typed = [t for t in texts or [] if isinstance(t, str) and t.strip()]
            if typed:
                return region["from_name"], typed[-1].strip()
    return None


def check_answer(ws, text: str):
    """What ``text`` written under None of these will count as: the webhook's
    :class:`~xmodal.labelstudio.annotations.Answer` for it."""
    return interpret(ws, AnnotationEvent(action="check", annotation_id=0, task_id=0, choice=NONE_CHOICE,
                                         text=text, cancelled=False, item_id=None, updated_at=None,
                                         task=None))


def check_result(ws, field: str, text: str, to_name: str) -> list[dict]:
    """The interactive answer for an entry: the ``check`` line, and for a problem the box emptied."""
    def box(name: str, lines: list[str]) -> dict:
        return {"from_name": name, "to_name": to_name, "type": "textarea", "value": {"text": lines}}

    answer = check_answer(ws, text)
    shown = text if len(text) <= 60 else text[:59] + "…"
    if answer.kind == "pair":
        return [box(CHECK_FIELD, [f"✓ {shown!r} counts as {SOURCES.get(answer.source, 'an answer')} when you Submit"])]
    return [box(CHECK_FIELD, [f"✗ Not taken: {answer.message}"]), box(field, [])]
