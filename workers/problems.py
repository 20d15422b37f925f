"""The problem-flag job: annotations that could not become a pair, shown on their tasks.

``flag_problems(project)`` runs in an RQ worker (enqueued by the backend when an annotation turns
into a problem, or stops being one): it sets or clears ``data.problem`` of the affected tasks in
Label Studio (:func:`xmodal.labelstudio.problems.flag_problems`), so that the annotator who reopens the
task reads what to fix and the team can filter the Data Manager by it.
"""

from __future__ import annotations

import redis

from xmodal.errors import DataError
from xmodal.labelstudio.problems import flag_problems as flag_in_label_studio
from xmodal.project.workspace import Workspace
from xmodal.redis_conn import get_redis


def flag_problems(project: str, redis_client: redis.Redis | None = None) -> dict:
    """RQ job: bring the problem flags of ``project``'s tasks up to date; returns what changed."""
    from rq import get_current_job

    job = get_current_job()
    r = redis_client or (job.connection if job is not None else get_redis())
    ws = Workspace.for_project(project)
    if not ws.exists():
        raise DataError(f"flag problems of {project}: no workspace at {ws.root} (is MODEL_DIR the "
                        "same for the backend and the workers?)")
    return flag_in_label_studio(r, ws)
