"""A Label Studio server of the demo's own (or the user's running one), the demo project in it,
and its labelling page as the simulated annotator uses it (:class:`LabelStudioPage`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING

from xmodal.demo.console import Console
from xmodal.demo.session import claim_ls_project_id
from xmodal.errors import ConfigError
from xmodal.labelstudio.images import images_folder
from xmodal.simulation.label_studio import label_studio_env
from xmodal.simulation.pages import LabelStudioPage
from xmodal.simulation.processes import ProcessManager, free_port, log_tail

if TYPE_CHECKING:
    from xmodal.demo.session import Bootstrap, DemoData


class LabelStudioSession(LabelStudioPage):
    """A Label Studio server of the demo's own (data dir under the demo cache, initialised once),
    one demo project, and the simulated annotator's clicks through its API.

    Label Studio then does what it does with a real annotator: it calls the backend's /webhook
    (registered by connecting the ML backend), and the worker pushes fresh predictions back."""

    USERNAME = "demo@xmodal.local"

    def __init__(self, ls_bin: Path | None, home: Path, pm: ProcessManager, console: Console):
        self.ls_bin, self.pm, self.console = (Path(ls_bin) if ls_bin else None), pm, console
        self.external_token: str | None = None
        self.window = 4  # open tasks kept in Label Studio ahead of the annotator (see _import_upto)
        self.root = Path(home) / "label-studio"
        self.data_dir = self.root / "data"
        self.url = None
        self.client = None
        self.project_id = None
        self.task_ids: dict[str, int] = {}
        self.answered: set[str] = set()
        self.empty_next = 0   # /next/ answers that served nothing while medoids were left
        self.select = "image"
        self.document_root: Path | None = None

    @classmethod
    def attach(cls, url: str, token: str | None, home: Path, pm: ProcessManager,
               console: Console) -> LabelStudioSession:
        """Use a Label Studio that is already running ($LABEL_STUDIO_URL / $LABEL_STUDIO_API_KEY)."""
        from xmodal.labelstudio.client import connect

        if not token:
            raise ConfigError("LABEL_STUDIO_URL is set but LABEL_STUDIO_API_KEY is not: set it to your "
                              "Label Studio access token (Account & Settings), or unset LABEL_STUDIO_URL "
                              "to let the demo run its own Label Studio (or pass --no-label-studio)")
        session = cls(None, home, pm, console)
        session.url = url.rstrip("/")
        session.external_token = token
        try:
            connect(session.url, token, timeout=15)
        except ConfigError as exc:
            raise ConfigError(f"{exc}; or unset LABEL_STUDIO_URL to let the demo start its own Label "
                              "Studio, or pass --no-label-studio") from None
        return session

    # credentials are made once and kept next to the data dir (0600)
    def credentials(self) -> dict:
        if self.external_token:
            return {"username": "(your account)", "password": "(yours)", "token": self.external_token}
        path = self.root / "credentials.json"
        if path.is_file():
            return json.loads(path.read_text())
        import secrets

        creds = {"username": self.USERNAME, "password": secrets.token_urlsafe(12),
                 "token": secrets.token_hex(20)}
        self.root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(creds))
        path.chmod(0o600)
        return creds

    def _env(self) -> dict:
        return label_studio_env(self.data_dir, self.document_root)

    def init(self) -> None:
        if (self.data_dir / "label_studio.sqlite3").exists():
            return
        creds = self.credentials()
        self.console.say("initialising Label Studio's database once (~45 s)…")
        work = self.root / "data.init"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        env = self._env()
        env["LABEL_STUDIO_BASE_DATA_DIR"] = str(work)
        log_path = self.pm.log_dir / "label-studio-init.log"
        self.pm.log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "w") as out:
            proc = subprocess.run(
                [str(self.ls_bin), "init", "--data-dir", str(work), "--username", creds["username"],
                 "--password", creds["password"], "--user-token", creds["token"],
                 "--enable-legacy-api-token", "--quiet"],
                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=work,
                timeout=900)
        if proc.returncode != 0 or not (work / "label_studio.sqlite3").exists():
            raise ConfigError(f"`label-studio init` failed (exit {proc.returncode}); its log "
                              f"({log_path}) ends with:\n{log_tail(log_path)}")
        shutil.rmtree(self.data_dir, ignore_errors=True)
        os.replace(work, self.data_dir)

    def launch(self, image_paths, port: int | None = None) -> None:
        """Start the server (initialising its database first, once); :meth:`wait` for it."""
        self.init()
        root = images_folder(image_paths)
        self.document_root = root.parent if root.parent != root else root
        self.storage_path = root
        self.port = port or free_port()
        self.child = self.pm.start("label-studio", [
            str(self.ls_bin), "start", "--no-browser", "--internal-host", "127.0.0.1",
            "--port", str(self.port), "--data-dir", str(self.data_dir)], env=self._env(), cwd=self.data_dir)

    def wait(self, timeout: float = 180.0) -> str:
        import requests

        child = self.child
        url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pm.check_alive(child, "starting")
            # `label-studio start` silently moves to port+1 when the port is busy
            moved = re.findall(r"Starting development server at http://[\d.]+:(\d+)/", log_tail(child.log_path, 400))
            if moved:
                url = f"http://127.0.0.1:{moved[-1]}"
            with contextlib.suppress(requests.RequestException, ValueError):
                r = requests.get(f"{url}/health", timeout=2)
                if r.ok and r.json().get("status") == "UP":
                    self.url = url
                    return url
            time.sleep(0.3)
        raise ConfigError(f"Label Studio did not become healthy at {url} within {timeout:.0f} s; "
                          f"its log ({child.log_path}):\n{log_tail(child.log_path)}")

    def setup_project(self, data: DemoData, boot: Bootstrap, backend_url: str, select: str,
                      title: str) -> int:
        """A fresh demo project (the previous run's is deleted), its tasks, the ML backend.

        The tasks are the pages ``xmodal project create`` makes (:mod:`xmodal.labelstudio.tasks`),
        and the workspace is linked the same way, so the worker's push rebuilds them alike."""
        from xmodal.labelstudio.client import connect
        from xmodal.labelstudio.config import read_label_config
        from xmodal.labelstudio.images import ImageURLs

        creds = self.credentials()
        self.client = connect(self.url, creds["token"])
        self.select = select
        label_config, template = read_label_config(select)
        old = self.client.find_project(title)
        if old is not None:
            self.client.delete_project(old)
        pid = self.client.ensure_project(title, label_config)
        self.project_id = pid
        claim_ls_project_id(self.redis, boot.ws, pid)
        if self.document_root is not None:
            self.client.ensure_local_storage(pid, str(self.storage_path), title="demo images")
            mode, root = "local", self.document_root
        else:   # a Label Studio elsewhere: inline thumbnails
            mode, root = "inline", None
        boot.ws.update_config(label_studio={
            "project_id": pid, "url": self.url, "label_config": template, "images": mode,
            "document_root": None if root is None else str(root), "title": title})
        self.ws, self.pool = boot.ws, boot.pool
        self.urls = ImageURLs(boot.ws, mode, root)
        self.queue = [boot.ws.ids(select)[int(r)] for r in boot.medoid_rows]
        self.client.ensure_ml_backend(pid, backend_url, "xmodal")
        self._import_upto(self.window)
        return pid

    def _import_upto(self, n: int) -> None:
        """Keep the first ``n`` medoids (anytime order) imported as tasks, their predictions pushed.

        A rolling window rather than all medoids at once: every rebuild pushes a prediction for
        every open task, one HTTP request each, which on a small machine costs ~0.2 s per task
        with Label Studio's development server; a short queue keeps the loop at ~1 s per label."""
        from xmodal.index.store import load_current
        from xmodal.labelstudio.push import push_current_predictions
        from xmodal.labelstudio.tasks import build_tasks, record_tasks

        todo = [m for m in self.queue[:n] if m not in self.task_ids]
        if not todo:
            return
        snap = load_current(self.ws, self.redis)
        tasks = build_tasks(self.ws, todo, self.pool, self.urls, snap)
        for t in tasks:   # cluster = position among all medoids
            t["data"]["cluster"] = self.queue.index(t["data"]["item_id"])
        ids = self.client.import_tasks(self.project_id, tasks)
        self.task_ids.update(ids)
        record_tasks(self.redis, self.ws, ids, tasks)
        push_current_predictions(self.client, self.redis, self.ws, self.project_id)

    # -- the page, as the simulated annotator sees it (xmodal.simulation.pages) ----------------
    def next_task(self, snap) -> dict | None:
        """The task Label Studio serves next ("Uncertainty sampling"), with its data as it is now."""
        done = sum(1 for m in self.queue if m in self.answered)
        if len(self.task_ids) - done < 2:   # refill in batches: every import lists the project's tasks
            self._import_upto(done + self.window)
        task = self.client.next_task(self.project_id)
        # Label Studio's /next/ can answer "no task" for a moment while tasks are open (at API
        # speed, about 1 run in 6 of the end-to-end test; a new user's COCO-mini demo stopped at 1
        # and at 11 of 40 labels): a person's page would be reloaded, so ask again for up to 5 s
        deadline = time.monotonic() + 5
        while task is None and done < len(self.queue) and time.monotonic() < deadline:
            self.empty_next += 1
            time.sleep(0.25)
            self._import_upto(done + self.window)
            task = self.client.next_task(self.project_id)
        return task

    def submit(self, task: dict, number: int, answer, from_name: str, to_name: str) -> int:
        self.answered.add(str(task["data"]["item_id"]))
        return super().submit(task, number, answer, from_name, to_name)
