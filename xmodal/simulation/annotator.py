"""Simulated annotators that answer a medoid task from what its labelling page shows.

:class:`HumanLikeAnnotator` is the one the demo, ``xmodal simulate`` and the browser test use: it
plays a person who looks at the page, not an oracle that knows the coupled id.

- **image task** (SSM-AL_I): it "knows what is in the image" the way a person looking at it does,
  through *one* of the image's own captions (chosen once per image, seeded). It takes a candidate
  if one of the first ``shown`` options is right (any caption of the image); else it types two or
  three content words of its caption into the filter, one at a time (the rarest first, as Label
  Studio's filter matches a substring of each option's value), and takes a right option among the
  first ``per_filter`` it then sees; else it chooses "None of these" and types those words into
  the search over all texts (when the page has one: ``search``), and picks the number of a right
  text among the results; else it writes its caption as the description.
- **text task** (SSM-AL_T): it looks at the first ``scan_images`` thumbnails of the grid and
  takes the right image if it is there; else it types up to three content words of the text into
  the filter (which matches the words under each thumbnail: what the image encoder sees in it) and
  takes the right image among the first ``per_filter_images`` left; else it skips the task (the id
  of an image it has not seen is nothing a person knows).

:class:`OracleAnnotator` hands over the coupled id (pasted when it is not among the options): the
ceiling line of a report, never the proof.

Both return an :class:`Answer`; :meth:`Answer.result` is the annotation result Label Studio would
store for it with the shipped labelling configs, :func:`webhook_payload` the webhook body.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np

from xmodal.labelstudio.page_check import TEXTAREA
from xmodal.labelstudio.page_search import HIT_FIELD, HITS_FIELD, SEARCH_FIELD, picked_id
from xmodal.labelstudio.tasks import NONE_CHOICE

# words that say nothing about what is in a picture
STOPWORDS = frozenset("""a an the and or of on in at to with for from by into onto over under near
next beside behind top front back its his her their this that these those some two three four one
is are was were be being been has have had it as up down out off very while there here other""".split())

# how an answer was found: a shown option, one left by the page's filter, a result of the search
# over all texts, a written description, a pasted id (the oracle), or none (a skip)
HOWS = ("shown", "filter", "search", "written", "pasted", "skipped")


@dataclass
class Answer:
    how: str                         # one of HOWS
    choice: str | None = None        # the option's alias (the item id) that was picked
    text: str | None = None          # what was written (a description, or a pasted id)
    words: list[str] = field(default_factory=list)   # what was typed into the filter, in order
    seconds: float = 0.0
    query: str | None = None         # what was typed into the search over all texts
    hits: list[str] | None = None    # the result lines it showed
    hit: int | None = None           # the number picked among them

    def result(self, select: str, from_name: str, to_name: str) -> list[dict]:
        """The annotation result of this answer (empty for a skip: ``was_cancelled``)."""
        if self.how == "skipped":
            return []
        if self.choice is not None:
            return [{"from_name": from_name, "to_name": to_name, "type": "choices",
                     "value": {"choices": [self.choice]}}]
        out = [{"from_name": from_name, "to_name": to_name, "type": "choices",
                "value": {"choices": [NONE_CHOICE]}}]
        if self.query is not None:   # what Label Studio keeps of a search: the words, the lines
            out += [{"from_name": SEARCH_FIELD, "to_name": to_name, "type": "textarea",
                     "value": {"text": [self.query]}},
                    {"from_name": HITS_FIELD, "to_name": to_name, "type": "textarea",
                     "value": {"text": list(self.hits or [])}}]
        if self.hit is not None:
            out.append({"from_name": HIT_FIELD, "to_name": to_name, "type": "choices",
                        "value": {"choices": [str(self.hit)]}})
        if self.text is not None:
            out.append({"from_name": TEXTAREA[select], "to_name": to_name, "type": "textarea",
                        "value": {"text": [self.text]}})
        return out


class Knowledge:
    """What a person knows of each medoid: for an image, the texts that describe it and the one it
    has in mind; for a text, its image(s)."""

    def __init__(self, right: dict[str, set[str]], in_mind: dict[str, str] | None = None):
        self.right = right
        self.in_mind = in_mind or {}

    @classmethod
    def from_dataset(cls, ds, select: str, seed: int = 0) -> Knowledge:
        rng = np.random.default_rng(seed)
        right: dict[str, set[str]] = {}
        captions: dict[str, list[int]] = {}
        for i, t in ds.pairs:
            img, txt = ds.image_ids[int(i)], ds.text_ids[int(t)]
            if select == "image":
                right.setdefault(img, set()).add(txt)
                captions.setdefault(img, []).append(int(t))
            else:
                right.setdefault(txt, set()).add(img)
        in_mind = {img: ds.texts[rows[int(rng.integers(len(rows)))]] for img, rows in sorted(captions.items())}
        return cls(right, in_mind)


def content_words(text: str, n: int = 3) -> list[str]:
    """Up to ``n`` words of ``text`` worth typing into a filter: no stop words, no numbers, three
    letters at least, the rarest first (``wordfreq``). In a script written without spaces a
    person still reads words ("三角形", "マゼンタ", not the whole sentence): the project's
    tokenizer cuts them, two characters make a word there, and the longest come first (English
    frequencies know none of them)."""
    from xmodal.encoders.sif import UNSPACED_SCRIPT, tokenize

    words, seen = [], set()
    for w in tokenize(text):
        unspaced = UNSPACED_SCRIPT.search(w) is not None
        if len(w) >= (2 if unspaced else 3) and w not in STOPWORDS and w not in seen \
                and not any(ch.isdigit() for ch in w):
            seen.add(w)
            words.append(w)
    try:
        from wordfreq import zipf_frequency

        words.sort(key=lambda w: (zipf_frequency(w, "en"), -len(w)))
    except ImportError:  # pragma: no cover - wordfreq is a dependency
        words.sort(key=len, reverse=True)
    return words[:n]


def page_filter(options: list[dict], word: str) -> list[dict]:
    """What Label Studio's ``<Filter>`` leaves visible: options whose value contains ``word``
    (case-insensitive substring), in list order."""
    word = word.casefold()
    return [o for o in options if word in str(o.get("value", "")).casefold()]


def _alias(option: dict) -> str:
    return str(option.get("alias") if option.get("alias") is not None else option.get("value"))


def first_right(options, right, first: int) -> str | None:
    """The id of a right option among the first ``first`` lines of a page, or None (what a person
    reading the page's first screen finds without filtering)."""
    return next((_alias(o) for o in options[:first] if isinstance(o, dict) and _alias(o) in right), None)


class HumanLikeAnnotator:
    """See the module doc. ``shown``: texts a person reads before filtering (the first screen of
    the list); ``per_filter``: texts read after each filter word; ``scan_images`` and
    ``per_filter_images``: the same for thumbnails, which are quicker to take in."""

    def __init__(self, knowledge: Knowledge, select: str, *, shown: int = 10, per_filter: int = 15,
                 max_words: int = 3, scan_images: int = 60, per_filter_images: int = 30):
        self.knowledge, self.select = knowledge, select
        self.shown, self.per_filter, self.max_words = shown, per_filter, max_words
        self.scan_images, self.per_filter_images = scan_images, per_filter_images

    def answer(self, data: dict, search=None) -> Answer:
        """``search``: the page's search over all texts (words -> the result lines the page then
        shows, :func:`xmodal.labelstudio.page_search.hits_lines`); None for a page without one."""
        t0 = time.perf_counter()
        item = str(data.get("item_id"))
        right = self.knowledge.right.get(item, set())
        options = [o for o in data.get("options") or [] if isinstance(o, dict)]
        answer = self._answer(item, right, options, str(data.get("text") or ""), search)
        answer.seconds = time.perf_counter() - t0
        return answer

    def _answer(self, item: str, right: set[str], options: list[dict], text: str, search) -> Answer:
        images = self.select == "text"     # a text task is a grid of thumbnails
        first, per_filter = ((self.scan_images, self.per_filter_images) if images
                             else (self.shown, self.per_filter))
        hit = first_right(options, right, first)
        if hit is not None:
            return Answer("shown", choice=hit)
        # what it types: words of the task's text, or of the caption it has in mind for the image
        words_from = text if images else self.knowledge.in_mind.get(item)
        if not words_from:
            return Answer("skipped")
        typed: list[str] = []
        for word in content_words(words_from, self.max_words):
            typed.append(word)
            visible = page_filter(options, word)[:per_filter]
            hit = next((_alias(o) for o in visible if _alias(o) in right), None)
            if hit is not None:
                return Answer("filter", choice=hit, words=typed)
        if images:
            return Answer("skipped", words=typed)
        if search is not None and typed:
            query = " ".join(typed)
            lines = search(query)
            for n in range(1, len(lines) + 1):
                if picked_id(lines, n, right) is not None:
                    return Answer("search", words=typed, query=query, hits=lines, hit=n)
            return Answer("written", text=words_from, words=typed, query=query, hits=lines)
        return Answer("written", text=words_from, words=typed)


class OracleAnnotator:
    """Hands over the coupled id: picked when it is an option, else pasted (the ceiling)."""

    def __init__(self, knowledge: Knowledge, select: str):
        self.knowledge, self.select = knowledge, select

    def answer(self, data: dict, search=None) -> Answer:
        right = sorted(self.knowledge.right.get(str(data.get("item_id")), ()))
        if not right:
            return Answer("skipped")
        ids = {_alias(o) for o in data.get("options") or [] if isinstance(o, dict)}
        hit = next((r for r in right if r in ids), None)
        return Answer("shown", choice=hit) if hit is not None else Answer("pasted", text=right[0])


def annotator(kind: str, knowledge: Knowledge, select: str):
    """``human`` (default everywhere) or ``oracle``."""
    if kind == "oracle":
        return OracleAnnotator(knowledge, select)
    if kind == "human":
        return HumanLikeAnnotator(knowledge, select)
    raise ValueError(f"unknown annotator {kind!r}: use 'human' or 'oracle'")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).isoformat().replace("+00:00", "Z")


def webhook_payload(ls_project: int, task: dict, annotation_id: int, result: list[dict] | None,
                    *, cancelled: bool = False, action: str = "ANNOTATION_CREATED") -> dict:
    """An annotation webhook body shaped like Label Studio 1.23's (``result`` as
    :meth:`Answer.result` gives it; ``cancelled`` for a skip)."""
    now = time.time()
    return {
        "action": action,
        "annotation": {"id": annotation_id, "result": [dict(r, id=f"r{annotation_id}-{j}", origin="manual")
                                                       for j, r in enumerate(result or [])],
                       "was_cancelled": bool(cancelled), "ground_truth": False,
                       "created_at": _iso(now), "updated_at": _iso(now), "lead_time": 1.0,
                       "task": task["id"], "project": ls_project, "completed_by": 1},
        "task": {"id": task["id"], "data": task["data"], "is_labeled": True, "project": ls_project},
        "project": {"id": ls_project, "title": "xmodal demo"},
    }


def answer_payload(ls_project: int, task: dict, annotation_id: int, answer: Answer, select: str,
                   from_name: str, to_name: str) -> dict:
    """The webhook body of an :class:`Answer`."""
    return webhook_payload(ls_project, task, annotation_id, answer.result(select, from_name, to_name),
                           cancelled=answer.how == "skipped")


def choice_payload(ls_project: int, task: dict, annotation_id: int, choice: str, from_name: str,
                   to_name: str, action: str = "ANNOTATION_CREATED") -> dict:
    """The webhook body of an annotation that picks ``choice`` (the load and loop benchmarks)."""
    return webhook_payload(ls_project, task, annotation_id, Answer("shown", choice=choice).result(
        "image", from_name, to_name), action=action)

