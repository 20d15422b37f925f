"""The labelling page as the simulated annotator uses it: the next task, the search box, Submit.

Two pages with one shape (``next_task(snap)``, ``search(task, query, to_name)``, ``submit(task,
number, answer, from_name, to_name) -> annotation id``): :class:`LabelStudioPage` is a real Label
Studio's (its ``/next/``, its interactive call for the search box, an annotation created through
its API, after which Label Studio posts the webhook itself); :class:`WebhookPage` stands in for
Label Studio where none runs, posting to the backend what Label Studio would.
"""

from __future__ import annotations

from pathlib import Path

from xmodal.errors import ConfigError


def _post(url: str, body: dict, timeout: float = 10.0) -> dict:
    import requests

    try:
        r = requests.post(url, json=body, timeout=timeout)
    except requests.RequestException as exc:
        raise ConfigError(f"the backend at {url} is unreachable: {exc}") from None
    if r.status_code >= 400:
        raise ConfigError(f"the backend answered {r.status_code} to {url}: {r.text[:500]}")
    return r.json()


class WebhookPage:
    """Label Studio's part without Label Studio: the page of a task is the data ``xmodal project
    create`` would import (ranked by the current index), the next task is the one "Uncertainty
    sampling" would serve (the lowest score), and an answer goes to the backend's /webhook as Label
    Studio would post it."""

    def __init__(self, ws, pool: list[str], backend_url: str, ls_project: int, medoid_rows):
        from xmodal.labelstudio.images import ImageURLs

        self.ws, self.pool, self.backend_url, self.ls_project = ws, pool, backend_url, ls_project
        self.urls = ImageURLs(ws, "local", Path("/"))   # the page's URLs; nothing fetches them
        self.ids = {ws.ids(ws.select)[int(r)]: j for j, r in enumerate(medoid_rows, 1)}
        self.done: set[str] = set()

    def next_task(self, snap) -> dict | None:
        from xmodal.labelstudio.predictions import task_prediction
        from xmodal.labelstudio.tasks import ranked_candidates, task_data

        left = [i for i in self.ids if i not in self.done]
        if not left:
            return None
        if snap is not None:   # Uncertainty sampling: the least certain first (ties: anytime order)
            score = {i: task_prediction(snap, {"data": {"item_id": i}}, "", "")["score"] for i in left}
            left.sort(key=lambda i: (score[i], self.ids[i]))
        item = left[0]
        data = task_data(self.ws, item, self.ids[item] - 1, ranked_candidates(self.ws, snap, item, self.pool),
                         self.urls, snap)
        return {"id": self.ids[item], "data": data}

    def search(self, task: dict, query: str, to_name: str) -> list[str]:
        """The page's search over all texts, as Label Studio asks it of the backend (/predict with
        the search box in ``params.context``); the result lines."""
        from xmodal.labelstudio.page_search import lines_of, search_context

        body = {"tasks": [task], "project": f"{self.ls_project}.0",
                "params": {"context": search_context(query, to_name)}}
        got = _post(f"{self.backend_url}/predict", body)
        return lines_of((got.get("results") or [{}])[0].get("result"))

    def submit(self, task: dict, number: int, answer, from_name: str, to_name: str) -> int:
        """Post the answer; returns its annotation id (the label's number)."""
        from xmodal.simulation.annotator import answer_payload

        self.done.add(task["data"]["item_id"])
        _post(f"{self.backend_url}/webhook", answer_payload(
            self.ls_project, task, number, answer, self.ws.select, from_name, to_name))
        return number


def page_search(page, task: dict, to_name: str, select: str):
    """The search box of ``task``'s page as the annotator uses it (words -> result lines), or None
    (text tasks have none)."""
    if select != "image" or not hasattr(page, "search"):
        return None
    return lambda query: page.search(task, query, to_name)


class LabelStudioPage:
    """A real Label Studio's page of project ``project_id``: the task ``/next/`` serves, the
    search box through Label Studio's interactive call (as the browser makes it), an answer
    created through its API (Label Studio then calls the backend's /webhook itself)."""

    def __init__(self, client, project_id: int, select: str):
        self.client, self.project_id, self.select = client, project_id, select

    def next_task(self, snap) -> dict | None:
        return self.client.next_task(self.project_id)

    def search(self, task: dict, query: str, to_name: str) -> list[str]:
        from xmodal.labelstudio.page_search import lines_of, search_context

        return lines_of(self.client.interactive(self.project_id, int(task["id"]),
                                                search_context(query, to_name)))

    def submit(self, task: dict, number: int, answer, from_name: str, to_name: str) -> int:
        """Returns the annotation id Label Studio gave the answer."""
        ann = self.client.create_annotation(int(task["id"]), answer.result(self.select, from_name, to_name),
                                            was_cancelled=answer.how == "skipped")
        return int(ann["id"])
