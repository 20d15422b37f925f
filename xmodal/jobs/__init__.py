"""Background jobs as the library sees them: queues, coalesced enqueueing, leases, statistics.

The job functions themselves live in the ``workers`` package and are named here by their dotted
path (``"workers.rebuild.rebuild"``), so that the backend and the command line can enqueue work
without importing the workers, and the workers can record stats without importing the backend.
"""
