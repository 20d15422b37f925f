"""The "search all texts" box of an image task's page (Label Studio interactive pre-annotation).

The page's ``<Filter>`` only matches the texts a task carries (``page_texts``). Under "None of
these" the page has a search box over *every* text of the project (``label_config/``):

1. the person types words into the ``search`` text area and presses Enter;
2. Label Studio (the ML backend is connected with ``is_interactive``; the box has
   ``smartOnly="true"``, so no toggle is needed) POSTs ``/predict`` with
   ``params.context.result`` = the regions of the annotation so far, among them ``search``;
3. the backend answers one result: the ``hits`` text area filled with a line saying what was
   searched and the best :data:`MAX_HITS` texts by BM25 (:mod:`xmodal.index.text_search`; while
   there is room, then the texts nearest in meaning by the project's text encoder), one per line,
   ``"<n>. <text> · <id>"``, and the ``hit`` choice emptied; Label Studio shows the lines under the box
   (each new search replaces them, and clears a number picked among the previous ones: it would name another text now);
4. the person picks the number of the right line in the ``hit`` choices (or pastes its id into
   the description box);
5. the annotation carries the lines and the number, so the webhook reads the id off the chosen
   line (:func:`picked_id`) and nothing has to be searched again.
"""

from __future__ import annotations

import hashlib
import logging

from xmodal.logfmt import kv

log = logging.getLogger(__name__)

SEARCH_FIELD = "search"     # text area: what the person typed (one entry per search)
HITS_FIELD = "hits"         # text area the backend fills: one line per text found
HIT_FIELD = "hit"           # choices "1".."10": the line the person picked
CHECK_FIELD = "check"       # text area the backend fills: what a typed answer will count as (page_check)
MAX_HITS = 10
MAX_QUERY_CHARS = 500
LINE_CHARS = 240            # a long text is cut in its line (the page shows one line per hit)
SEPARATOR = " · "           # between a line's text and its id (a double space collapses on the page)


def search_query(context) -> str | None:
    """The last search typed on the page, from ``/predict``'s ``params.context``; None when the
    context is not a search (another interactive trigger)."""
    if not isinstance(context, dict) or not isinstance(context.get("result"), list):
        return None
    for region in context["result"]:
        if isinstance(region, dict) and region.get("from_name") == SEARCH_FIELD \
                and isinstance(region.get("value"), dict):
            texts = region["value"].get("text")
            texts = [texts] if isinstance(texts, str) else texts
            if isinstance(texts, list):
                typed = [t for t in texts if isinstance(t, str) and t.strip()]
                if typed:
                    return " ".join(typed[-1].split())[:MAX_QUERY_CHARS]
    return None



def line_ref(text_id: str) -> str:
    """What a line shows in place of a text id the page hides (``show_ids``,
    :func:`xmodal.labelstudio.tasks.ids_shown`: Flickr8k's ids hold the image's file name, COCO's
    its number): a short digest of the id, which :func:`picked_id` resolves."""
    return "ref " + hashlib.sha256(text_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def hit_line(n: int, text_id: str, text: str, show_id: bool = True) -> str:
    text = " ".join(str(text).split())
    if len(text) > LINE_CHARS:
        text = text[:LINE_CHARS - 1].rstrip() + "…"
    return f"{n}. {text}{SEPARATOR}{text_id if show_id else line_ref(text_id)}"


def hits_lines(ws, query: str, k: int = MAX_HITS, similar=None) -> list[str]:
    """What the page shows for ``query``: a line naming the search, then the numbered lines (the
    texts with its words, best first; then, while there is room, texts of similar meaning:
    ``similar(query, k)`` -> text ids, the text encoder's nearest); or one line saying nothing
    matched."""
    from xmodal.index.text_search import text_search
    from xmodal.labelstudio.tasks import ids_shown

    shown = query if len(query) <= 80 else query[:79] + "…"
    search = text_search(ws)
    found = [tid for tid, _ in search.search(query, k)]
    words = len(found)
    if len(found) < k and similar is not None:
        try:
            seen = set(found)
            found += [t for t in similar(query, k) if t not in seen][:k - len(found)]
        except Exception as exc:  # noqa: BLE001 - the words' results still stand
            log.warning(kv("page_search.similar_failed", project=ws.name,
                           error=f"{type(exc).__name__}: {exc}"[:300]))
    if not found:
        return [f"No text of this project has the words {shown!r}: try other words, or "
                "describe the image below"]
    if words == len(found):
        head = f"Texts with the words {shown!r}, best first: click the right line below"
    elif words:
        head = (f"Texts with the words {shown!r} (1–{words}), then texts of a similar meaning: click "
                "the right line below")
    else:
        head = (f"No text has the words {shown!r}; texts of a similar meaning: click the right "
                "line below")
    show_id = ids_shown(ws)
    return [head] + [hit_line(n, tid, search.text(tid), show_id) for n, tid in enumerate(found, 1)]


def hits_result(lines: list[str], to_name: str) -> list[dict]:
    """The interactive answer Label Studio merges into the annotation: the ``hits`` text area, and
    the ``hit`` choice emptied (a number picked before named a line of the previous search)."""
    return [{"from_name": HITS_FIELD, "to_name": to_name, "type": "textarea",
             "value": {"text": lines}},
            {"from_name": HIT_FIELD, "to_name": to_name, "type": "choices", "value": {"choices": []}}]


def search_context(query: str, to_name: str) -> dict:
    """The ``context`` Label Studio sends when ``query`` is typed into the search box."""
    return {"result": [{"from_name": SEARCH_FIELD, "to_name": to_name, "type": "textarea",
                        "value": {"text": [query]}}]}


def lines_of(result) -> list[str]:
    """The ``hits`` lines of an interactive answer's result regions."""
    for region in result or []:
        if isinstance(region, dict) and region.get("from_name") == HITS_FIELD:
            return [str(t) for t in (region.get("value") or {}).get("text") or []]
    return []


def picked_id(lines, number, known) -> str | None:
    """The text id at the end of the line numbered ``number`` in ``lines`` (or the id of the
    :func:`line_ref` there), if it is in ``known``."""
    try:
        n = int(str(number).strip())
    except ValueError:
        return None
    prefix = f"{n}. "
    line = next((x.strip() for x in lines or [] if isinstance(x, str) and x.strip().startswith(prefix)),
                None)
    if line is None:
        return None
    parts = line.split(SEPARATOR)   # the id follows the last separator (or one before it)
    for j in range(len(parts) - 1, 0, -1):
        tail = SEPARATOR.join(parts[j:])
        if tail in known:
            return tail
    tail = parts[-1]
    if len(parts) > 1 and tail.startswith("ref "):
        return next((t for t in known if line_ref(t) == tail), None)
    return None
