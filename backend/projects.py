"""Which workspace a Label Studio request is about.

Label Studio names its project as ``"<id>.<created_at epoch>"`` in /setup and /predict, and as a
project object (``{"id": ...}``) or an id in webhooks. The id maps to a workspace
(``$MODEL_DIR/<name>/``), first match wins:

1. the Redis hash ``P:ls_projects`` (id -> workspace name), a cache of the steps below;
2. the workspace whose ``config.json`` has ``label_studio.project_id == id`` (``xmodal project``
   writes it when it creates the Label Studio project);
   or whose ``source.label_studio_project_id == id`` (the project ``--from-label-studio`` read its
   items from: only its task webhooks are taken, :meth:`ProjectResolver.is_source`);
3. a workspace directory named by the id itself (``$MODEL_DIR/12/``);
4. ``$XMODAL_PROJECT``, the single-project default: on /setup it is linked to the Label Studio
   project (``label_studio.project_id`` written to its config) so that the workers can push. Until
   then a webhook or /predict of that Label Studio project is a 404 (never stored into it).

Anything else is a 404 with the list of what was tried.
"""

from __future__ import annotations

import logging
from pathlib import Path

import redis

from xmodal.errors import ApiError, DataError
from xmodal.labelstudio.annotations import ls_project_id
from xmodal.logfmt import kv
from xmodal.project.workspace import Workspace, find_by_label_studio_id, list_workspaces
from xmodal.redis_conn import check_project_name, gkey

log = logging.getLogger(__name__)



class ProjectResolver:
    def __init__(self, redis_client: redis.Redis, base: Path, default_project: str | None = None):
        self.redis = redis_client
        self.base = Path(base)
        self.default_project = default_project or None
        self._workspaces: dict[str, Workspace] = {}

    @property
    def map_key(self) -> str:
        return gkey("ls_projects")

    def workspace(self, name: str) -> Workspace:
        try:
            check_project_name(name)
        except ValueError as exc:
            raise ApiError(400, str(exc)) from None
        ws = self._workspaces.get(name)
        if ws is None:
            ws = self._workspaces[name] = Workspace(self.base / name)
        if not ws.exists():
            raise ApiError(404, f"no xmodal project {name!r}",
                           hint="`xmodal status` lists the projects; `xmodal project create` makes one")
        return ws

    def _linked_id(self, ws: Workspace) -> int | None:
        try:
            pid = ws.config["label_studio"].get("project_id")
        except DataError:
            return None
        return None if pid is None else int(pid)

    def for_label_studio(self, ls_id: int | None, link_default: bool = False) -> Workspace:
        """The workspace of Label Studio project ``ls_id``. ``$XMODAL_PROJECT`` stands in for an
        unlinked one only on /setup (``link_default``), which links it: a webhook or /predict of
        a project nothing is linked to is a 404 saying what to run, never stored into (or served
        from) the default project. Only links are cached."""
        if ls_id is None:
            raise ApiError(400, "the request names no Label Studio project "
                                "(expected \"project\": \"<id>.<epoch>\" or a project object)")
        cached = self.redis.hget(self.map_key, str(ls_id))
        if cached:
            name = cached.decode()
            ws = Workspace(self.base / name)
            if ws.exists() and self._is_link(ws, ls_id):
                return self._workspaces.setdefault(name, ws)
            self.redis.hdel(self.map_key, str(ls_id))
        ws = find_by_label_studio_id(ls_id, self.base) or self._by_source(ls_id)
        if ws is None:
            by_dir = Workspace(self.base / str(ls_id))
            if by_dir.exists() and self._is_link(by_dir, ls_id):
                ws = by_dir
        if ws is None and self.default_project:
            ws = self._link_default(ls_id, link_default)
        if ws is None:
            raise ApiError(404, f"no xmodal project is linked to Label Studio project {ls_id}",
                           hint="create it with `xmodal project create` (which links it), name a "
                                "workspace directory after the id, or set XMODAL_PROJECT and "
                                "connect the ML backend in the Label Studio project's settings "
                                "(its /setup links it)")
        self.redis.hset(self.map_key, str(ls_id), ws.name)
        return self._workspaces.setdefault(ws.name, ws)

    def _is_link(self, ws: Workspace, ls_id: int) -> bool:
        """``ws`` is Label Studio project ``ls_id``'s: linked to it in its config, made from it
        (its source), or an unlinked workspace named by the id."""
        linked = self._linked_id(ws)
        return linked == ls_id or self.is_source(ws, ls_id) or (linked is None and ws.name == str(ls_id))

    @staticmethod
    def source_id(ws: Workspace) -> int | None:
        """The Label Studio project ``ws`` was made from (``--from-label-studio``), or None."""
        try:
            pid = (ws.config.get("source") or {}).get("label_studio_project_id")
        except DataError:
            return None
        return None if pid is None else int(pid)

    def is_source(self, ws: Workspace, ls_id: int | None) -> bool:
        """Label Studio project ``ls_id`` is ``ws``'s source project, not its labelling project: its
        webhooks bring items (``TASKS_CREATED``/``TASKS_DELETED``), never labels."""
        return ls_id is not None and self.source_id(ws) == ls_id and self._linked_id(ws) != ls_id

    def _by_source(self, ls_id: int) -> Workspace | None:
        made = self.made_from(ls_id)
        return made[0] if made else None

    def made_from(self, ls_id: int) -> list[Workspace]:
        """Every workspace made from Label Studio project ``ls_id`` (``--from-label-studio`` may
        run more than once on one source, under other names): its task webhooks go to each."""
        return [self._workspaces.setdefault(ws.name, ws) for ws in list_workspaces(self.base)
                if self.source_id(ws) == ls_id and self._linked_id(ws) != ls_id]

    def _link_default(self, ls_id: int, link: bool) -> Workspace:
        ws = Workspace(self.base / self.default_project)
        if not ws.exists():
            raise ApiError(404, f"XMODAL_PROJECT={self.default_project!r} but there is no "
                                "such xmodal project (create it with `xmodal project create`)")
        linked = self._linked_id(ws)
        if linked is not None and linked != ls_id:
            raise ApiError(404, f"xmodal project {ws.name!r} is linked to Label Studio project "
                                f"{linked}, not {ls_id}",
                           hint=f"create a project for {ls_id} with `xmodal project create`")
        if linked is None:
            if not link:
                raise ApiError(404, f"Label Studio project {ls_id} is not linked to xmodal project "
                                    f"{ws.name!r} (XMODAL_PROJECT) yet; nothing was stored",
                               hint="connect the ML backend in that Label Studio project's "
                                    "settings (its /setup links it), then run `xmodal project "
                                    f"resync --name {ws.name}` for the labels sent before")
            ws.link_label_studio(ls_id)
            log.info(kv("project.linked", project=ws.name, ls_project=ls_id))
        return ws

    def for_query(self, project) -> Workspace:
        """/search and friends: a workspace name, a Label Studio id, or the default/only one."""
        if project not in (None, ""):
            if not isinstance(project, (str, int)) or isinstance(project, bool):
                raise ApiError(400, "project must be a workspace name or a Label Studio project id")
            name = str(project)
            if _valid_name(name) and (self.base / name / "config.json").is_file():
                return self.workspace(name)
            ls_id = ls_project_id(name)
            if ls_id is not None:
                return self.for_label_studio(ls_id)
            raise ApiError(404, f"no xmodal project {name!r}")
        if self.default_project:
            return self.workspace(self.default_project)
        all_ws = list_workspaces(self.base)
        if len(all_ws) == 1:
            return self.workspace(all_ws[0].name)
        raise ApiError(400, "name the project (\"project\": workspace name or Label Studio id)",
                       projects=[w.name for w in all_ws])


def _valid_name(name: str) -> bool:
    """Whether ``name`` can be a workspace name at all (else it is never looked up on disk)."""
    try:
        check_project_name(name)
    except ValueError:
        return False
    return True
