"""Label Studio predictions from an index: the one formatter used by ``/predict`` and by the
push (:mod:`xmodal.labelstudio.push`).

A task asks about one item of the workspace's *select* modality (``data.item_id``) and offers
candidates of the other modality as choices (``data.options``, item ids as ``alias``). Its
prediction:

- ``score`` = the index's calibrated confidence that its top candidate for the item is right, a
  probability in [0, 1] (:meth:`IndexSnapshot.confidence`, learnt by leave-one-out over the
  labels): Label Studio shows it as a percentage, and its "Uncertainty sampling" serves the lowest
  first, i.e. the medoid the index is least sure of. It does not depend on the task's option list
  (it ranks *all* items of the other modality), so tasks whose options are older than the index are
  still ordered by how sure the index is about their item;
- the top candidate among the task's own options as a ``choices`` result (Label Studio pre-selects
  only a choice that is one of them), **only when the confidence is at least**
  ``$XMODAL_PRESELECT_MIN`` (default 0.5): a pre-selected wrong answer costs a person more than an
  empty one;
- without signal ("unlabelled" index, fewer than 2 pairs for Pearson): an empty result and a score
  that is no confidence at all (the item's anytime position among the medoids scaled to [0, 0.001),
  shown as 0 %), so that the medoids are served in anytime (coverage) order.
"""

from __future__ import annotations

from xmodal import settings
from xmodal.index.snapshot import IndexSnapshot
from xmodal.labelstudio.tasks import option_values

UNLABELLED_SCALE = 0.001     # anytime order without claiming any confidence


class UnknownItem(KeyError):
    """The task names an item that is not in the project."""


def preselect_min() -> float:
    """``$XMODAL_PRESELECT_MIN``: the confidence from which the top candidate is pre-selected."""
    try:
        return settings.get("XMODAL_PRESELECT_MIN")
    except ValueError:
        return 0.5


def task_prediction(snap: IndexSnapshot, task: dict, from_name: str, to_name: str,
                    score: float | None = None) -> dict:
    """Label Studio prediction for one task (see the module doc). Raises UnknownItem / ValueError.

    ``score``: the item's confidence when the caller has it already (it depends on the item, not
    on the options, so a task whose options were just rebuilt keeps it)."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict) or data.get("item_id") is None:
        raise ValueError("task has no data.item_id")
    item_id = str(data["item_id"])
    if item_id not in snap.rows(snap.select):
        raise UnknownItem(f"item {item_id!r} is not a {snap.select} of this project")
    if not snap.has_signal:
        return {"result": [], "score": round(UNLABELLED_SCALE * snap.medoid_priority(item_id), 8),
                "model_version": snap.model_version}
    if score is None:
        score = snap.confidence(item_id)
    result = []
    if score >= preselect_min():
        ranking = snap.rank(snap.select, item_id, option_values(data.get("options")), k=1)
        if ranking:
            result = [{"from_name": from_name, "to_name": to_name, "type": "choices",
                       "value": {"choices": [ranking[0][0]]}}]
    return {"result": result, "score": round(float(score), 6), "model_version": snap.model_version}
