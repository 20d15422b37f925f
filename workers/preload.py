"""The worker class ``xmodal worker`` runs: rq's forking ``Worker``, with the rebuild's imports done
once in the parent.

Each job runs in a forked work horse. Without this, every horse imports the job's modules anew;
the Label Studio SDK alone takes ~1 s, which was a third of the label -> new predictions latency.
Imported here, the modules are already in every fork. Use with the stock command:
``rq worker --worker-class workers.preload.PreloadedWorker``.
"""

from rq.worker import Worker

import workers.predictions  # noqa: F401
import workers.rebuild  # noqa: F401
import workers.resync  # noqa: F401
import xmodal.labelstudio  # noqa: F401  (label_studio_sdk)


class PreloadedWorker(Worker):
    """rq's ``Worker`` unchanged; importing this module is the point."""
