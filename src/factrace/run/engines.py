"""Engines: where the per-shard tasks of :class:`ShardWorker` run.

- ``local``: one worker in this process.
- ``ray``: one worker per Ray actor (one model replica each; a GPU each when ``gpus_per_worker``
  is set), tasks spread over the actors, results returned in task order.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from factrace.errors import FactraceError
from factrace.extras import require
from factrace.run.worker import EncoderSpec, ShardWorker

ENGINES = ("local", "ray")


def check_engine(name: str) -> None:
    """Refuse an engine name that is not one of :data:`ENGINES`."""
    if name not in ENGINES:
        raise FactraceError(f"unknown engine {name!r} (use local or ray)")


class LocalEngine:
    """Runs every task in this process, in order."""

    name = "local"

    def __init__(self, spec: EncoderSpec):
        self.worker = ShardWorker(spec)

    @property
    def encoder(self):
        return self.worker.encoder

    def broadcast(self, method: str, *args) -> None:
        getattr(self.worker, method)(*args)

    def map(self, method: str, tasks: list[tuple]) -> Iterator[Any]:
        for args in tasks:
            yield getattr(self.worker, method)(*args)

    def close(self) -> None:
        pass


class RayEngine:
    """Runs tasks on Ray actors; ``address=None`` starts a local Ray for the run."""

    name = "ray"

    def __init__(self, spec: EncoderSpec, workers: int = 2, address: str | None = None,
                 gpus_per_worker: float = 0.0, cpus_per_worker: float = 1.0):
        require("--engine ray", "ray")
        import ray

        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            if address:
                ray.init(address=address, include_dashboard=False, log_to_driver=False)
            else:
                ray.init(num_cpus=max(workers * cpus_per_worker, 1), include_dashboard=False,
                         log_to_driver=False)
            self._started = True
        actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(ShardWorker)
        threads = max(1, int(cpus_per_worker))
        self.actors = [actor.remote(spec, threads, tune_process_settings=True) for _ in range(workers)]
        self.driver = ShardWorker(spec)  # the driver's own replica: fitting and query encoding

    @property
    def encoder(self):
        return self.driver.encoder

    def broadcast(self, method: str, *args) -> None:
        getattr(self.driver, method)(*args)
        refs = [getattr(a, method).remote(*args) for a in self.actors]
        self.ray.get(refs)

    def map(self, method: str, tasks: list[tuple]) -> Iterator[Any]:
        """Tasks round-robin over actors, at most two in flight per actor; yields in order."""
        pending: dict[int, Any] = {}
        nxt = 0
        window = 2 * len(self.actors)
        for i in range(len(tasks)):
            while nxt < len(tasks) and nxt < i + window:
                actor = self.actors[nxt % len(self.actors)]
                pending[nxt] = getattr(actor, method).remote(*tasks[nxt])
                nxt += 1
            yield self.ray.get(pending.pop(i))

    def close(self) -> None:
        for a in self.actors:
            self.ray.kill(a)
        if self._started:
            self.ray.shutdown()


def make_engine(name: str, spec: EncoderSpec, workers: int = 2, address: str | None = None,
                gpus_per_worker: float = 0.0):
    check_engine(name)
    if name == "local":
        return LocalEngine(spec)
    return RayEngine(spec, workers, address, gpus_per_worker)
