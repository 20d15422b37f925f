"""The labelling loop a simulated person runs through the real services, label by label.

One loop for ``xmodal demo`` and ``xmodal simulate`` (:mod:`xmodal.benchmarks.loop`): the task
served next (:mod:`xmodal.simulation.pages`), the person's answer from what its page shows
(:mod:`xmodal.simulation.annotator`), Submit, then the two waits a person would see: the label
stored as a pair by the backend (``/webhook``), and a published index that holds it (the worker's
rebuild; with ``visible``, also its predictions where the caller looks for them). Each label is
yielded as a :class:`Label`; what is measured after it is the caller's.

    for label in label_loop(page, person, knowledge, ws, redis_client, index=waiter, labels=20,
                            from_name=..., to_name=...):
        ...   # label.snap is the index after it
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from xmodal.errors import ConfigError
from xmodal.simulation.annotator import HOWS, first_right
from xmodal.simulation.pages import page_search

#: the page's first screen: the lines a person reads before filtering (issue 23 item 3)
FIRST_LINES = 10
#: labels per block of the shown_top10 report
BLOCK = 10


@dataclass
class Label:
    number: int                  # 1-based
    item_id: str                 # the medoid the task showed
    task: dict
    answer: object               # xmodal.simulation.annotator.Answer
    record: dict                 # the pair store's record; {"state": "missing"} when none came
    snap: object                 # the current index after this label (None before any)
    found: bool                  # a right pair (one of the medoid's matches, or a description)
    shown_top10: bool = False    # a right option was among the first FIRST_LINES lines of the page
    version: int | None = None   # the index version that holds it (None: not a pair)
    seconds: float = 0.0         # the person's own time on the page
    post_s: float = 0.0          # Submit -> the backend stored the record
    latency_s: float | None = None   # Submit -> a published index (and its predictions) holds it
    timing: dict = field(default_factory=dict)

    @property
    def state(self) -> str | None:
        return self.record.get("state")


class IndexWaiter:
    """Waits until the published index holds ``n`` pairs in a version after ``after``, and, with
    ``visible(version)``, until that version's predictions are visible where the caller looks
    (the backend's /predict, or Label Studio's project). ``check_alive()`` raises when the worker
    died; a timeout is a ConfigError that says what it waited for (``hint``: where to look)."""

    def __init__(self, store, *, timeout: float = 120.0, check_alive: Callable[[], None] | None = None,
                 visible: Callable[[int], bool] | None = None, hint: Callable[[], str] = lambda: ""):
        self.store, self.timeout, self.check_alive = store, timeout, check_alive
        self.visible, self.hint = visible, hint

    def wait(self, n_pairs: int, after: int = 0) -> int:
        deadline = time.monotonic() + self.timeout
        delay = 0.005
        while True:
            info = self.store.info() or {}
            version = int(info.get("version", 0))
            if int(info.get("n_pairs", -1)) >= n_pairs and version > after \
                    and (self.visible is None or self.visible(version)):
                return version
            if time.monotonic() > deadline:
                raise ConfigError(f"no index with {n_pairs} pairs became visible within "
                                  f"{self.timeout:.0f} s{self.hint()}")
            if self.check_alive is not None:
                self.check_alive()
            time.sleep(delay)
            delay = min(delay * 1.5, 0.1)


def wait_record(pairs, annotation_id: int, timeout: float = 30.0) -> dict:
    """The pair store's record of an annotation (the backend stores it from the webhook), or
    ``{"state": "missing"}`` after ``timeout``: a label that was lost."""
    deadline = time.monotonic() + timeout
    while True:
        rec = pairs.get(annotation_id)
        if rec is not None:
            return rec
        if time.monotonic() > deadline:
            return {"state": "missing"}
        time.sleep(0.005)


def label_loop(page, person, knowledge, ws, redis_client, *, index: IndexWaiter, labels: int,
               from_name: str, to_name: str, record_timeout: float = 30.0) -> Iterator[Label]:
    """Label up to ``labels`` tasks, each the one ``page`` serves next, answered by ``person``
    from what the task's page shows; yields each :class:`Label` after its index is published.
    Stops early when the page serves no task (the caller sees fewer labels)."""
    from xmodal.index.store import load_current
    from xmodal.project.pairs import PairStore

    pairs = PairStore(redis_client, ws.name)
    select = ws.select
    snap = load_current(ws, redis_client)
    stored = version = 0
    for number in range(1, labels + 1):
        t_page = time.perf_counter()
        task = page.next_task(snap)
        if task is None:
            return
        item_id = str(task["data"]["item_id"])
        # what the page served, before anyone filters or searches: did the index put a right
        # option on its first screen (whatever the annotator then does)
        top10 = first_right(task["data"].get("options") or [], knowledge.right.get(item_id, ()),
                            FIRST_LINES) is not None
        answer = person.answer(task["data"], search=page_search(page, task, to_name, select))
        t_submit = time.perf_counter()
        annotation_id = page.submit(task, number, answer, from_name, to_name)
        rec = wait_record(pairs, annotation_id, record_timeout)
        t_stored = time.perf_counter()
        latency = None
        if rec.get("state") == "pair":
            stored += 1
            version = index.wait(stored, version)
            latency = time.perf_counter() - t_submit
        snap = load_current(ws, redis_client)
        chosen = rec.get("text_id") if select == "image" else rec.get("image_id")
        found = rec.get("state") == "pair" and (chosen in knowledge.right.get(item_id, ())
                                                or bool(rec.get("description")))
        yield Label(number=number, item_id=item_id, task=task, answer=answer, record=rec, snap=snap,
                    found=found, shown_top10=top10, version=version if latency is not None else None,
                    seconds=t_submit - t_page, post_s=t_stored - t_submit, latency_s=latency)


def shown_top10(done: list[Label], block: int = BLOCK) -> list[dict]:
    """Per block of ``block`` labels (1–10, 11–20, …): how many tasks had a right option among
    the first :data:`FIRST_LINES` lines of their page, and that share of the block's tasks."""
    out = []
    for start in range(0, len(done), block):
        part = done[start:start + block]
        count = sum(x.shown_top10 for x in part)
        out.append({"labels": f"{part[0].number}-{part[-1].number}", "tasks": len(part),
                    "shown_top10": count, "rate": round(count / len(part), 4)})
    return out


def summary(done: list[Label], records: dict) -> dict:
    """What a run of the loop did: labels, pairs and problems stored, labels lost (neither a pair
    nor a problem, and not skipped), the found rate, how each pair was found, and how often the
    page's first lines held a right option (:func:`shown_top10`, per block of labels)."""
    n = len(done)
    return {"labels": n,
            "pairs_stored": sum(1 for r in records.values() if r.get("state") == "pair"),
            "problems": sum(1 for r in records.values() if r.get("state") == "problem"),
            "lost": sum(1 for x in done if x.state not in ("pair", "problem") and x.answer.how != "skipped"),
            "found_rate": round(sum(x.found for x in done) / n, 4) if n else None,
            "how": {h: sum(1 for x in done if x.answer.how == h) for h in HOWS},
            "shown_top10": shown_top10(done)}
