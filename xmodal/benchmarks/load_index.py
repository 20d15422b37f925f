"""What the load benchmark watches on the index side: every new version as it appears (label ->
new predictions), and the end state once the queue drains (pairs expected vs stored: lost)."""

from __future__ import annotations

import threading
import time

import numpy as np

from xmodal.errors import ConfigError

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
N_OPTIONS = 10          # candidate texts per task, like a Label Studio task's options


# -- watching the index ---------------------------------------------------------------------

class IndexWatch:
    """Polls the current index version (what ``/metrics`` reports) and, for each new one, reads which
    pair each annotation has in its file; a second thread asks ``/predict`` until it serves it."""

    def __init__(self, r, ws, url: str, ls_project: int, probe_task: dict, poll_s: float = 0.01,
                 probe: bool = True):
        from xmodal.index.store import IndexStore

        self.store, self.ws, self.url, self.poll_s = IndexStore(r, ws), ws, url, poll_s
        self.image_ids, self.text_ids = ws.ids("image"), ws.ids("text")
        self.predict_body = {"tasks": [probe_task], "project": f"{ls_project}.0", "label_config": "",
                             "params": {}}
        self.seen: list[tuple[int, float, dict]] = []    # (version, perf_counter, {ann: pair})
        self.served: list[tuple[int, float]] = []        # (version /predict answered, perf_counter)
        self.vanished = 0                                # versions pruned before they could be read
        self.predict_errors = 0
        self.stop = threading.Event()
        self._wake = threading.Event()
        self.threads = [threading.Thread(target=self._watch, daemon=True, name="index-watch")]
        if probe:
            self.threads.append(threading.Thread(target=self._predict, daemon=True, name="predict-probe"))

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def close(self):
        self.stop.set()
        self._wake.set()
        for t in self.threads:
            t.join(10)

    def _pairs_of(self, version: int) -> dict | None:
        from xmodal.index.files import index_path

        try:
            with np.load(index_path(self.ws, version), allow_pickle=False) as z:
                rows, anns = z["pair_rows"], z["annotation_ids"]
        except (FileNotFoundError, OSError, KeyError, ValueError):
            return None
        return {int(a): (self.image_ids[i], self.text_ids[t]) for a, (i, t) in zip(anns, rows)}

    def _watch(self):
        last = 0
        while not self.stop.is_set():
            v = self.store.current_version() or 0
            if v > last:
                t = time.perf_counter()
                pairs = self._pairs_of(v)
                if pairs is None:
                    self.vanished += 1
                else:
                    self.seen.append((v, t, pairs))
                    self._wake.set()
                last = v
            self.stop.wait(self.poll_s)

    def _predict(self):
        import requests

        session = requests.Session()
        served = 0
        while not self.stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            while not self.stop.is_set() and self.seen and self.seen[-1][0] > served:
                try:
                    resp = session.post(f"{self.url}/predict", json=self.predict_body, timeout=30)
                    v = int(str(resp.json()["model_version"]).lstrip("v"))
                except (requests.RequestException, ValueError, KeyError, TypeError):
                    self.predict_errors += 1
                    v = served
                if v > served:
                    served = v
                    self.served.append((v, time.perf_counter()))
                else:
                    time.sleep(0.005)
        session.close()


# -- the end state --------------------------------------------------------------------------

def expected_pairs(posts: list) -> tuple[dict, set]:
    """annotation id -> the pair it names after its last acknowledged post; and the annotations one
    of whose posts failed (their final pair may be either)."""
    want, uncertain = {}, set()
    for p in sorted(posts, key=lambda p: p.t_sent):
        if p.error is None and p.status in ("stored", "same"):
            want[p.annotation_id] = p.pair
        elif p.error is not None:
            uncertain.add(p.annotation_id)
    return want, uncertain


def drain(r, ws, queue_name: str, timeout: float) -> float:
    """Wait until no rebuild is queued or running and the current index covers every pair change."""
    from rq.registry import StartedJobRegistry

    from xmodal.jobs import stats
    from xmodal.jobs.queueing import flag_key, get_queue
    from xmodal.project.pairs import PairStore

    q = get_queue(r, queue_name)
    pairs = PairStore(r, ws.name)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        idle = q.count == 0 and StartedJobRegistry(queue=q).count == 0 and not r.exists(flag_key(ws.name))
        if idle and int(stats.last_rebuild(r, ws.name).get("changes", -1)) >= pairs.changes():
            return time.perf_counter() - t0
        time.sleep(0.05)
    raise ConfigError(f"the queue did not drain within {timeout:.0f} s")


def lost_pairs(r, ws, posts: list) -> dict:
    """Acknowledged pairs missing from the final index, and the PairStore cross-check."""
    from xmodal.index.store import load_current
    from xmodal.project.pairs import PairStore

    want, uncertain = expected_pairs(posts)
    snap = load_current(ws, r)
    img, txt = (snap.ids("image"), snap.ids("text")) if snap is not None else ([], [])
    in_index = {} if snap is None else {int(a): (str(img[i]), str(txt[t]))
                                        for a, (i, t) in zip(snap.annotation_ids, snap.pair_rows)}
    stored = {p["annotation_id"]: (p["image_id"], p["text_id"]) for p in PairStore(r, ws.name).all_pairs()}
    lost = sorted(a for a, pair in want.items() if in_index.get(a) != pair and a not in uncertain)
    wrong_store = sorted(a for a, pair in want.items() if stored.get(a) != pair and a not in uncertain)
    return {"acknowledged": len(want), "in_index": len(in_index), "in_pair_store": len(stored),
            "lost": len(lost), "lost_ids": lost[:20], "pair_store_mismatch": len(wrong_store),
            "uncertain": len(uncertain), "final_version": None if snap is None else snap.version}


