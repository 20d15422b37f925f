"""The labelling loop with real pieces, driven through Label Studio's API (the protocol test;
what a person does on the page is tests/test_browser.py).

A REAL Label Studio 1.23.2 (tests/ls_server.py), the real Redis server, a real ML backend
(`xmodal serve`, gunicorn) and a real RQ worker process (`xmodal worker`). The project is
bootstrapped from COCO-mini (first caption per image, 24 image medoids) with `create_project`;
then an oracle that knows the ground truth (pairs.json: the protocol, not the quality proof) labels 20 tasks
*through Label Studio's API*, in the order Label Studio's "Uncertainty sampling" serves them (`/next/`). Label
Studio itself delivers every annotation to the backend's /webhook.

Asserted, in order:
- a wrong API key is a ConfigError raised before anything is written;
- bootstrap: 24 tasks carrying item_id / cluster / options, images served by Label Studio's
  local-files storage, ONE webhook (the one ml.create registers), predictions of v1 with an empty
  result accepted by Label Studio, project model_version == index version, /next/ serves the first
  medoid of the anytime order (lowest score);
- the first label: the webhook arrived (the pair is in the PairStore) and a worker rebuilt the
  index (version advanced);
- after 5 labels: an index with the 5 pairs, Label Studio holds predictions of that model version
  (non-empty, one of the task's options) for every unlabelled task, its model_version is it, and
  /next/ serves the lowest-scored one; the worker pushed with the /setup access_token (no API key in
  the worker's environment);
- after 20 labels: Recall@10 of the index beats the 5-pair index (mean of image->text and
  text->image, over the items that are not references);
- rerunning the bootstrap adds no task, backend, webhook or storage, and re-ranks the options of
  the unlabelled tasks with the index (their predictions pushed again);
- `grow` adds 2 medoids as tasks whose options are ranked by the current index, with predictions
  of the current model version.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import poll
from ls_server import ls_server_fixture

pytestmark = pytest.mark.e2e

COCO = Path(os.environ.get("XMODAL_COCO_MINI")
            or Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_mini")
K = 24
LABELS = 20
EARLY = 5

ls_server = ls_server_fixture()


@pytest.fixture(scope="session")
def coco_mini():
    if not (COCO / "pairs.json").is_file():
        pytest.skip(f"COCO-mini is not at {COCO} (set XMODAL_COCO_MINI to its folder): the e2e loop "
                    "test needs real images and captions")
    return COCO


def recall_at_10(snap, image_rows: np.ndarray, text_rows: np.ndarray) -> tuple[float, float]:
    """Recall@10 image->text and text->image; image_rows[i] is coupled with text_rows[i]."""
    from xmodal.core.metrics import recall_at_k

    S = snap.image_codes[image_rows] @ snap.text_codes[text_rows].T
    truth = np.arange(len(image_rows))
    return recall_at_k(S, truth, (10,))[10], recall_at_k(S.T, truth, (10,))[10]


def test_label_studio_loop(coco_mini, ls_server, xenv, services):
    from xmodal.datasets.coco import load_coco_mini
    from xmodal.index.store import IndexStore
    from xmodal.labelstudio.client import connect
    from xmodal.labelstudio.project import ProjectSpec, create_project, grow_project
    from xmodal.project.pairs import PairStore
    from xmodal.project.workspace import Workspace
    from xmodal.redis_conn import pkey

    t_start = time.perf_counter()
    r, procs = xenv.redis, services["procs"]
    name = f"e2e-{xenv.tag}"
    spec = ProjectSpec(name=name, data=coco_mini, select="image", k=K, captions="first",
                       label_studio_url=ls_server.url, api_key=ls_server.token,
                       backend_url=services["url"], images="local",
                       document_root=str(ls_server.document_root))
    messages: list[str] = []
    from xmodal.errors import ConfigError

    with pytest.raises(ConfigError, match="rejected the API key"):   # before any heavy work
        create_project(ProjectSpec(**dict(vars(spec), api_key="wrong-key-0123456789")), redis_client=r)
    assert not Workspace.for_project(name).root.exists()
    t0 = time.perf_counter()
    boot = create_project(spec, say=messages.append, redis_client=r)
    bootstrap_s = time.perf_counter() - t0
    ls = connect(ls_server.url, ls_server.token)

    def predictions() -> list[dict]:
        return ls.api("GET", "/api/predictions/", params={"project": pid})

    def listed(what: str) -> list[dict]:   # "ml", "webhooks", "storages/localfiles"
        return ls.api("GET", f"/api/{what}/", params={"project": pid})
    pid = boot.ls_project_id
    ws = Workspace.for_project(name)
    store, pairs = IndexStore(r, ws), PairStore(r, name)
    try:
        # -- bootstrap -------------------------------------------------------------------
        assert boot.k == K and len(boot.task_ids) == K and boot.new_tasks == K, messages
        assert boot.images == "local", messages
        tasks = {t["id"]: t for t in ls.list_tasks(pid)}
        assert len(tasks) == K
        medoids = ws.medoid_ids()
        assert sorted(t["data"]["item_id"] for t in tasks.values()) == sorted(medoids)
        for t in tasks.values():
            d = t["data"]
            assert d["cluster"] == medoids.index(d["item_id"])
            # every text of the project is on the page (the filter searches them), its id shown
            assert sorted(o["alias"] for o in d["options"]) == sorted(ws.ids("text"))
        # Label Studio serves the medoid image it was given
        first = next(t for t in tasks.values() if t["data"]["item_id"] == medoids[0])
        img = ls._get("/data/local-files/", d=first["data"]["image"].split("?d=", 1)[1])
        assert img.status_code == 200 and img.content[:2] == b"\xff\xd8"
        assert [h["url"] for h in listed("webhooks")] == [services["url"] + "/webhook"]
        v1 = store.current_version()
        assert boot.model_version == f"v{v1}" and boot.predictions_pushed == K
        assert ls.get_project(pid)["model_version"] == f"v{v1}"
        preds = predictions()
        assert len(preds) == K and {p["model_version"] for p in preds} == {f"v{v1}"}
        assert all(p["result"] == [] for p in preds)          # accepted although empty
        assert ls.next_task(pid)["data"]["item_id"] == medoids[0]   # anytime order via scores

        # -- labelling through Label Studio ----------------------------------------------
        ds = load_coco_mini(coco_mini, captions="first")
        truth = {ds.image_ids[i]: ds.text_ids[t] for i, t in ds.pairs}
        truth_any = {}
        for i, t in ds.pairs:
            truth_any.setdefault(ds.image_ids[i], set()).add(ds.text_ids[t])
        labelled: list[str] = []
        labelled_tasks: set[int] = set()
        latencies: list[float] = []

        empty_next = []   # /next/ answers that served nothing while tasks were open

        def label_next() -> dict:
            task = ls.next_task(pid)
            if task is None:
                # Label Studio's /next/ has answered "no task" for a moment while this test labels
                # at API speed (about 1 run in 6; cause not found in its next_task.py): a person's
                # page would show "No more tasks" and be reloaded. Ask again for up to 5 s, and
                # report it, rather than treat a transient answer as the end of the queue.
                empty_next.append(len(labelled))
                task = poll("a task from /next/ while tasks are open", lambda: ls.next_task(pid), timeout=5,
                            interval=0.25)
            assert task is not None
            item = task["data"]["item_id"]
            assert item not in labelled
            answer = truth[item]
            values = [o["alias"] for o in task["data"]["options"]]
            if answer in values:
                result = [{"from_name": "caption", "to_name": "image", "type": "choices",
                           "value": {"choices": [answer]}}]
            else:   # "None of these" + the pasted id, as an annotator would
                result = [{"from_name": "caption", "to_name": "image", "type": "choices",
                           "value": {"choices": ["__none__"]}},
                          {"from_name": "description", "to_name": "image", "type": "textarea",
                           "value": {"text": [answer]}}]
            ann = ls.create_annotation(task["id"], result)
            labelled.append(item)
            labelled_tasks.add(task["id"])
            return {"task": task, "annotation": ann["id"], "item": item, "answer": answer}

        def pair_of(annotation_id):
            rec = pairs.get(annotation_id)
            return rec if rec and rec.get("state") == "pair" else None

        def wait_index(n_pairs: int, t_label: float | None = None) -> int:
            def ready():
                info = store.info()
                if int(info.get("n_pairs", -1)) != n_pairs:
                    return None
                v = int(info["version"])
                return v if ls.get_project(pid)["model_version"] == f"v{v}" else None
            v = poll(f"an index with {n_pairs} pairs pushed to Label Studio", ready, procs=procs)
            if t_label is not None:
                latencies.append(time.perf_counter() - t_label)
            return v

        # the first label: webhook -> PairStore, worker -> a new index version
        t_label = time.perf_counter()
        first_label = label_next()
        rec = poll("the webhook's pair in the PairStore", lambda: pair_of(first_label["annotation"]),
                    procs=procs)
        assert (rec["image_id"], rec["text_id"]) == (first_label["item"], first_label["answer"])
        poll("a rebuilt index", lambda: (store.current_version() or 0) > v1, procs=procs)
        wait_index(1, t_label)

        for _ in range(EARLY - 1):
            t_label = time.perf_counter()
            label_next()
        v5 = wait_index(EARLY, t_label)
        snap5 = store.load(v5)
        assert snap5.has_signal and snap5.n_pairs == EARLY
        # the model_version flips after the next-served tasks' predictions; the worker then pushes
        # the rest (nobody labels meanwhile): Label Studio soon holds them for every unlabelled task
        open_tasks = {t["id"]: t for t in ls.list_tasks(pid) if t["id"] not in labelled_tasks}
        assert len(open_tasks) == K - EARLY

        def preds_of(v):
            return {p["task"]: p for p in predictions() if p["model_version"] == f"v{v}"}
        poll("predictions of the new version for every open task",
              lambda: len(preds_of(v5)) >= len(open_tasks), procs=procs, timeout=30, interval=0.2)
        preds5 = preds_of(v5)
        assert set(preds5) == set(open_tasks)
        for tid, p in preds5.items():
            assert 0.0 <= p["score"] <= 1.0   # a calibrated confidence, pre-selected only from 0.5
            assert (p["score"] >= 0.5) == bool(p["result"]), (p["score"], p["result"])
            if p["result"]:
                assert p["result"][0]["from_name"] == "caption"
                offered = [o["alias"] for o in open_tasks[tid]["data"]["options"]]
                assert p["result"][0]["value"]["choices"][0] in offered
        # one current prediction per open task, updated in place: none pile up
        per_task = {}
        for p in predictions():
            per_task[p["task"]] = per_task.get(p["task"], 0) + 1
        assert all(per_task.get(t, 0) == 1 for t in open_tasks), per_task
        # /next/ follows the scores of the current version: the least certain task first
        lowest = min(preds5.values(), key=lambda p: (p["score"], p["task"]))
        nxt = ls.next_task(pid)
        assert preds5[nxt["id"]]["score"] == pytest.approx(lowest["score"])
        # ... and the task it serves offers candidates ranked by that index, its top-1 first
        served = [o["alias"] for o in nxt["data"]["options"]]
        assert served == [c for c, _ in snap5.rank("image", nxt["data"]["item_id"], None, len(served))]
        assert nxt["data"]["index_version"] == v5 and f"model v{v5} ({EARLY} labels)" in nxt["data"]["model_note"]
        top = preds5[nxt["id"]]["result"]
        assert top[0]["value"]["choices"] == [served[0]] if top else True
        # the worker had no API key in its environment: it used the /setup access_token
        learned = r.hget(pkey(name, "ls"), "api_key")
        assert learned and os.environ.get("LABEL_STUDIO_API_KEY", "") == ""
        last = pkey(name, "rebuild", "last")   # recorded just after the push: poll
        poll("the rebuild's stats", lambda: r.hmget(last, "version", "ls") == [str(v5).encode(), b"pushed"],
              procs=procs, timeout=10)

        for _ in range(LABELS - EARLY):
            t_label = time.perf_counter()
            label_next()
        v20 = wait_index(LABELS, t_label)
        snap20 = store.load(v20)
        assert snap20.n_pairs == LABELS and v20 > v5

        # -- quality: the 20-pair index beats the 5-pair one ------------------------------
        refs = set(labelled)
        img_rows = np.array([i for i, iid in enumerate(ds.image_ids) if iid not in refs])
        txt_rows = np.array([ws.row_of("text")[truth[ds.image_ids[i]]] for i in img_rows])
        r5 = recall_at_10(snap5, img_rows, txt_rows)
        r20 = recall_at_10(snap20, img_rows, txt_rows)
        chance = 10 / len(img_rows)
        print(f"\nRecall@10 over {len(img_rows)} non-reference pairs (i2t, t2i): 5 pairs {r5}, "
              f"20 pairs {r20}, chance {chance:.3f}; bootstrap {bootstrap_s:.1f} s; "
              f"label->LS predictions {', '.join(f'{x:.2f}' for x in latencies)} s; "
              f"/next/ served nothing for a moment after labels {empty_next}")
        assert np.mean(r20) > np.mean(r5), (r5, r20)
        assert min(r20) > 2 * chance, r20

        # the remaining tasks carry predictions of the final version
        poll("predictions of the final version for every open task",
              lambda: len(preds_of(v20)) >= K - LABELS, procs=procs, timeout=30, interval=0.2)
        final = {p["task"] for p in predictions() if p["model_version"] == f"v{v20}"}
        # the tasks we did not annotate: LS 1.23 itself works around an "inconsistent is_labeled
        # flag" (tasks/models.py), and a CI run once saw it false on an annotated task
        assert final == {t["id"] for t in ls.list_tasks(pid)} - labelled_tasks
        assert len(final) == K - LABELS

        # -- rerunning the bootstrap adds nothing ----------------------------------------
        again = create_project(spec, say=messages.append, redis_client=r)
        assert again.ls_project_id == pid and again.new_tasks == 0 and again.new_medoids == 0
        assert again.reused_features
        final = [p for p in predictions() if p["model_version"] == f"v{v20}"]
        assert sorted(p["task"] for p in final) == sorted(t["id"] for t in ls.list_tasks(pid)
                                                          if t["id"] not in labelled_tasks)
        for p in final:   # options re-ranked by the index: its top-1 is the first option
            data = ls.task_data(p["task"])
            assert data["index_version"] == v20
            if p["result"]:
                assert p["result"][0]["value"]["choices"][0] == data["options"][0]["alias"]
        assert len(ls.list_tasks(pid)) == K
        assert len(listed("ml")) == 1
        assert len(listed("webhooks")) == 1
        assert len(listed("storages/localfiles")) == 1
        assert ls.get_project(pid)["model_version"] == f"v{store.current_version()}"

        # -- grow: 2 more medoids, their options ranked by the current index ----------------
        grown = grow_project(name, K + 2, label_studio_url=ls_server.url, api_key=ls_server.token,
                             redis_client=r)
        assert grown.new_medoids == 2 and grown.new_tasks == 2 and grown.medoid_ids[:K] == medoids
        snap = store.load(store.current_version())
        current = f"v{snap.version}"
        added = [t for t in ls.list_tasks(pid) if t["data"]["item_id"] in grown.medoid_ids[K:]]
        assert len(added) == 2 and len(ls.list_tasks(pid)) == K + 2
        for t in added:
            served = [o["alias"] for o in t["data"]["options"]]
            assert served == [c for c, _ in snap.rank("image", t["data"]["item_id"], None, len(served))]
            assert t["data"]["cluster"] == grown.medoid_ids.index(t["data"]["item_id"])
        with_pred = {p["task"] for p in predictions() if p["model_version"] == current}
        assert with_pred == {t["id"] for t in ls.list_tasks(pid)} - labelled_tasks
        assert ls.get_project(pid)["model_version"] == current
        # -- a problem is flagged on its task, and cleared once fixed -------------------------
        tid = added[0]["id"]
        none = [{"from_name": "caption", "to_name": "image", "type": "choices",
                 "value": {"choices": ["__none__"]}}]
        ann = ls.create_annotation(tid, none)
        poll("the problem on its task", lambda: ls.task_data(tid).get("problem"), procs=procs)
        assert "None of these was chosen" in ls.task_data(tid)["problem"]
        answer = sorted(truth_any[added[0]["data"]["item_id"]])[0]
        ls.api("PATCH", f"/api/annotations/{ann['id']}/", json={"result": [
            {"from_name": "caption", "to_name": "image", "type": "choices", "value": {"choices": [answer]}}]})
        poll("the flag cleared", lambda: ls.task_data(tid).get("problem") == "", procs=procs)
        assert pairs.get(ann["id"])["state"] == "pair"
        print(f"e2e loop test body: {time.perf_counter() - t_start:.1f} s")
    finally:
        with contextlib.suppress(Exception):
            ls.delete_project(pid)
