"""Starting an RQ worker on the bridge's queue, with its scheduler (retries are scheduled)."""

from __future__ import annotations

from rq import Worker
from rq.serializers import JSONSerializer

from bridge.queues import bridge_queue, connect
from bridge.settings import Settings
from workers import runtime


def run(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    """Work the queue until stopped (or, with ``burst``, until it is empty)."""
    connection = connect(settings)
    runtime.configure(settings, connection)
    worker = Worker(
        [bridge_queue(connection)],
        connection=connection,
        serializer=JSONSerializer,
        name=name,
    )
    return bool(worker.work(with_scheduler=True, burst=burst, logging_level=settings.log_level))
