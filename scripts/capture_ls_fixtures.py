"""Capture the request bodies a real Label Studio sends to an ML backend -> tests/fixtures/ls_1_23/.

    .venv/bin/python scripts/capture_ls_fixtures.py [--out tests/fixtures/ls_1_23] [--data DIR]

Starts a throwaway Label Studio (tests/ls_server.py) and a recording ML backend (http.server on
127.0.0.1), connects them (``POST /api/ml/``) and drives LS through the events the product uses.
Every body is saved as <name>.json; the API token is replaced by "<LABEL_STUDIO_TOKEN>" and the
project's invite token (``project.token`` in webhook payloads) by "<PROJECT_TOKEN>".
``_index.json`` lists every request in arrival order (method, path, headers, file).
Images come from --data (default /work/shared/data/coco_mini, served as LS local files).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import ls_server  # noqa: E402

from xmodal.labelstudio.client import connect  # noqa: E402

PLACEHOLDER = "<LABEL_STUDIO_TOKEN>"
PROJECT_TOKEN = "<PROJECT_TOKEN>"


class Recorder:
    def __init__(self):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.model_version = "recorder-v1"
        self.from_name, self.to_name = "caption", "image"

    def answer(self, method: str, path: str, body):
        if path == "/health":
            return {"status": "UP", "model_class": "Recorder"}
        if path == "/setup":
            return {"model_version": self.model_version}
        if path == "/predict":
            results = []
            for i, task in enumerate(body.get("tasks", [])):
                opts = task["data"].get("options") or []
                choice = opts[0]["value"] if opts else "__none__"
                results.append({"result": [{"from_name": self.from_name, "to_name": self.to_name,
                                            "type": "choices", "value": {"choices": [choice]}}],
                                "score": round(0.1 * (i + 1), 3), "model_version": self.model_version})
            return {"results": results, "model_version": self.model_version}
        return {"status": "ok"}

    def serve(self) -> ThreadingHTTPServer:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def _do(self):
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode(errors="replace")
                with rec.lock:
                    rec.requests.append({"method": self.command, "path": self.path,
                                         "headers": dict(self.headers), "body": body, "t": time.time()})
                out = json.dumps(rec.answer(self.command, self.path, body or {})).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = _do

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def since(self, mark: int, wait: float = 1.5) -> list[dict]:
        time.sleep(wait)  # webhooks are sent synchronously, /predict may lag a little
        with self.lock:
            return self.requests[mark:]

    def mark(self) -> int:
        with self.lock:
            return len(self.requests)


def scrub(obj, token: str):
    """Replace secrets: the user's API token anywhere, and the project's invite ``token``."""
    if isinstance(obj, dict):
        return {k: PROJECT_TOKEN if k == "token" and isinstance(v, str) else scrub(v, token)
                for k, v in obj.items()}
    if isinstance(obj, list):
        return [scrub(v, token) for v in obj]
    if isinstance(obj, str) and token in obj:
        return obj.replace(token, PLACEHOLDER)
    return obj


def retrieve_predictions(ls, pid: int) -> None:
    """The Data Manager action "Retrieve predictions" on every task: LS calls the backend's /predict."""
    ls.api("POST", "/api/dm/actions/", params={"id": "retrieve_tasks_predictions", "project": pid},
           json={"selectedItems": {"all": True, "excluded": []}})


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "ls_1_23"))
    ap.add_argument("--data", default="/work/shared/data/coco_mini")
    args = ap.parse_args()
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    pairs = json.loads((data / "pairs.json").read_text())[:6]

    rec = Recorder()
    backend = rec.serve()
    backend_url = f"http://127.0.0.1:{backend.server_address[1]}"
    server = ls_server.start_label_studio(document_root=data.parent)
    saved: dict[str, dict] = {}
    index: list[dict] = []

    def save(name: str, req: dict, note: str):
        body = scrub(req["body"], server.token)
        (out / f"{name}.json").write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        saved[name] = req
        print(f"  {name:40s} {req['method']} {req['path']}  ({note})")

    def take(reqs: list[dict], path: str, action: str | None = None) -> dict:
        for r in reqs:
            if r["path"] == path and (action is None or (r["body"] or {}).get("action") == action):
                return r
        seen = [(r["path"], (r["body"] or {}).get("action")) for r in reqs]
        raise RuntimeError(f"no {path} {action or ''} among {seen}")

    try:
        ls = connect(server.url, server.token)
        rel = data.name

        # -- SSM-AL_I: image medoids, caption candidates ------------------------------------------
        cfg_i = (ROOT / "label_config" / "image_to_text.xml").read_text()
        pid = ls.ensure_project("capture image_to_text", cfg_i)
        ls.ensure_local_storage(pid, str(data))
        m = rec.mark()
        ls.ensure_ml_backend(pid, backend_url, "xmodal")
        reqs = rec.since(m)
        take(reqs, "/health")  # a GET without body: only listed in _index.json
        save("setup", take(reqs, "/setup"), "ml.create")
        hooks = ls.api("GET", "/api/webhooks/", params={"project": pid})
        print(f"  webhooks after ml.create: {[(h['url'], h['send_for_all_actions']) for h in hooks]}")
        print(f"  project model_version after ml.create: {ls.get_project(pid)['model_version']!r}")

        tasks = []
        for k, p in enumerate(pairs[:3]):
            options = [{"value": f"{q['image_id']}#0", "html": q["captions"][0]} for q in pairs]
            tasks.append({"data": {"item_id": p["file"], "image": f"/data/local-files/?d={rel}/{p['file']}",
                                   "options": options, "cluster": k}})
        m = rec.mark()
        ids = ls.import_tasks(pid, tasks)
        reqs = rec.since(m)
        save("webhook_tasks_created", take(reqs, "/webhook", "TASKS_CREATED"), "import_tasks")
        t1, t2, t3 = (ids[p["file"]] for p in pairs[:3])

        m = rec.mark()
        retrieve_predictions(ls, pid)
        reqs = rec.since(m, wait=3)
        save("predict", take(reqs, "/predict"), "actions.create retrieve_tasks_predictions")
        print(f"  requests for the action: {[r['path'] for r in reqs]}")

        choice = pairs[0]["image_id"]
        caption = {"from_name": "caption", "to_name": "image", "type": "choices",
                   "value": {"choices": [f"{choice}#0"]}}
        m = rec.mark()
        ann = ls.create_annotation(t1, [caption], lead_time=3.5)
        reqs = rec.since(m)
        save("webhook_annotation_created", take(reqs, "/webhook", "ANNOTATION_CREATED"), "annotations.create")

        m = rec.mark()
        other = dict(caption, value={"choices": [f"{pairs[1]['image_id']}#0"]})
        ls.api("PATCH", f"/api/annotations/{ann['id']}/", json={"result": [other]})
        reqs = rec.since(m)
        save("webhook_annotation_updated", take(reqs, "/webhook", "ANNOTATION_UPDATED"), "annotations.update")

        m = rec.mark()
        none = [dict(caption, value={"choices": ["__none__"]}),
                {"from_name": "match_id", "to_name": "image", "type": "textarea",
                 "value": {"text": [f"{pairs[4]['image_id']}#2"]}}]
        ann2 = ls.create_annotation(t2, none)
        reqs = rec.since(m)
        save("webhook_annotation_created_none_with_id", take(reqs, "/webhook", "ANNOTATION_CREATED"),
             "none of these + pasted text id")

        m = rec.mark()
        ls.create_annotation(t3, [], was_cancelled=True)
        reqs = rec.since(m)
        save("webhook_annotation_created_cancelled", take(reqs, "/webhook", "ANNOTATION_CREATED"),
             "skipped task (was_cancelled)")

        m = rec.mark()
        ls.api("DELETE", f"/api/annotations/{ann2['id']}/")
        reqs = rec.since(m)
        save("webhook_annotations_deleted", take(reqs, "/webhook", "ANNOTATIONS_DELETED"), "annotations.delete")

        backend_id = ls.api("GET", "/api/ml/", params={"project": pid})[0]["id"]
        m = rec.mark()
        ls.api("POST", f"/api/ml/{backend_id}/train", json={})
        reqs = rec.since(m)
        train = [r for r in reqs if r["path"] in ("/train", "/webhook")]
        if train and train[0]["path"] == "/webhook":
            save("webhook_start_training", train[0], "ml.train (feature flag: START_TRAINING to /webhook)")
        elif train:
            save("train", train[0], "ml.train (legacy POST /train)")

        m = rec.mark()
        ls.api("PATCH", f"/api/projects/{pid}/", json={"min_annotations_to_start_training": 1})
        reqs = rec.since(m)
        if any(r["path"] == "/webhook" for r in reqs):
            save("webhook_project_updated", take(reqs, "/webhook", "PROJECT_UPDATED"), "projects.update")
        m = rec.mark()
        ls.create_annotation(t2, [caption])
        reqs = rec.since(m)
        auto = [r for r in reqs if (r["body"] or {}).get("action") == "START_TRAINING" or r["path"] == "/train"]
        if auto:
            save("webhook_start_training_auto", auto[0], "min_annotations_to_start_training reached")

        m = rec.mark()
        ls.api("DELETE", f"/api/tasks/{t3}/")
        reqs = rec.since(m)
        deleted = [r for r in reqs if (r["body"] or {}).get("action") == "TASKS_DELETED"]
        if deleted:
            save("webhook_tasks_deleted", deleted[0], "tasks.delete")

        # -- SSM-AL_T: text medoids, image candidates ---------------------------------------------
        rec.from_name, rec.to_name = "image", "text"
        cfg_t = (ROOT / "label_config" / "text_to_image.xml").read_text()
        pid_t = ls.ensure_project("capture text_to_image", cfg_t)
        ls.ensure_local_storage(pid_t, str(data))
        ls.ensure_ml_backend(pid_t, backend_url, "xmodal")
        img_opts = [{"value": q["file"], "html": f"<img src='/data/local-files/?d={rel}/{q['file']}' "
                                                 f"style='max-height:120px' alt='{q['file']}'>"} for q in pairs]
        t_tasks = [{"item_id": f"{p['image_id']}#0", "text": p["captions"][0], "options": img_opts}
                   for p in pairs[:2]]
        ids_t = ls.import_tasks(pid_t, t_tasks)
        m = rec.mark()
        retrieve_predictions(ls, pid_t)
        reqs = rec.since(m, wait=3)
        save("predict_text_to_image", take(reqs, "/predict"), "text_to_image project")
        m = rec.mark()
        ls.create_annotation(ids_t[t_tasks[0]["item_id"]],
                             [{"from_name": "image", "to_name": "text", "type": "choices",
                               "value": {"choices": [pairs[0]["file"]]}}])
        reqs = rec.since(m)
        save("webhook_annotation_created_text_to_image", take(reqs, "/webhook", "ANNOTATION_CREATED"),
             "text_to_image project")

        for r in rec.requests:
            name = next((n for n, s in saved.items() if s is r), None)
            index.append({"method": r["method"], "path": r["path"],
                          "action": (r["body"] or {}).get("action") if isinstance(r["body"], dict) else None,
                          "file": f"{name}.json" if name else None,
                          "headers": {k: v for k, v in r["headers"].items() if k.lower() != "authorization"}})
        (out / "_index.json").write_text(json.dumps(index, indent=2) + "\n")
        print(f"{len(saved)} fixtures, {len(index)} requests recorded -> {out}")
    finally:
        server.stop()
        backend.shutdown()
        print(f"Label Studio log: {server.log_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
