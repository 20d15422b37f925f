"""Label Studio predictions from an index: the one formatter used by ``/predict`` and by the
push (:mod:`xmodal.labelstudio.push`).

A task asks about one item of the workspace's *select* modality (``data.item_id``) and offers
candidates of the other modality as choices (``data.options``, values = item ids). Its prediction:

- with a ranking signal (Pearson: >= 2 pairs, cosine: >= 1): the top-1 candidate as a ``choices``
  result, ``score`` = its cross-modal similarity (eq. 32/33, in [-1, 1]). Label Studio's
  "Uncertainty sampling" serves the lowest score first, i.e. the medoid the index is least sure of;
- without signal ("unlabelled" index, no cross-modal information yet): an empty result (proposing
  an arbitrary caption would only bias the annotator) and ``score`` = the item's anytime position
  among the medoids scaled to [0, 1), so the medoids are served in anytime (coverage) order.

The score does not depend on the task's option list: it is the item's similarity to its best
match among *all* items of the other modality, so tasks whose options are older than the index are
still ordered by how sure the index is about their item. The proposed choice is the best of the
task's own options (Label Studio only pre-selects a choice that is one of them).
"""

from __future__ import annotations

from xmodal.index.store import IndexSnapshot
from xmodal.labelstudio.tasks import option_values


class UnknownItem(KeyError):
    """The task names an item that is not in the project."""


def task_prediction(snap: IndexSnapshot, task: dict, from_name: str, to_name: str) -> dict:
    """Label Studio prediction for one task (see the module doc). Raises UnknownItem / ValueError."""
    data = task.get("data") if isinstance(task, dict) else None
    if not isinstance(data, dict) or data.get("item_id") is None:
        raise ValueError("task has no data.item_id")
    item_id = str(data["item_id"])
    if item_id not in snap.rows(snap.select):
        raise UnknownItem(f"item {item_id!r} is not a {snap.select} of this project")
    candidates = option_values(data.get("options"))
    ranking = snap.rank(snap.select, item_id, candidates, k=1)
    if snap.has_signal and ranking:
        top = ranking[0][0]
        score = item_certainty(snap, item_id)
        result = [{"from_name": from_name, "to_name": to_name, "type": "choices",
                   "value": {"choices": [top]}}]
    else:
        result, score = [], snap.medoid_priority(item_id)
    return {"result": result, "score": round(float(score), 6), "model_version": snap.model_version}


def item_certainty(snap: IndexSnapshot, item_id: str) -> float:
    """Similarity of an item of the select modality to its best match among all candidates."""
    best = snap.rank(snap.select, str(item_id), None, k=1)
    return best[0][1] if best else 0.0
