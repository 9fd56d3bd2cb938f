"""The live (store, embedder) pair, replaced as ONE reference so a request that read it never mixes two models.

`Live` is the pair's one owner: every store write holds `Live.writes`; `cut_over` (called with `writes` held, by a
model switch or by a gateway following another gateway's switch) is the one way to replace the pair, and the
one place that retires the old pair once the requests that read it are done. `switch` reports the progress of a
running model switch.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from server.core.config import Settings
from server.embedding.embedder import Embedder
from server.model_versions.calibration import Calibration, load_calibration
from server.store.base import Store

log = logging.getLogger("serving")
FALLBACK_DUPLICATE_THRESHOLD = 0.87  # chosen on photo pairs before per-version calibration (issue 16)


@dataclass(frozen=True)
class Serving:
    store: Store
    embedder: Embedder  # the encoder version that produced the store's vectors, with its preprocessing
    calibration: Calibration | None = None  # the encoder version's duplicate threshold and relevance calibrator

    def duplicate_threshold(self, configured: float | None) -> float:
        """An explicit setting wins; else the version's calibrated threshold; else the old photo-based one."""
        if configured is not None:
            return configured
        return self.calibration.duplicate_threshold if self.calibration else FALLBACK_DUPLICATE_THRESHOLD


def serving(store: Store, embedder: Embedder, settings: Settings) -> Serving:
    """The pair with its encoder version's calibration (from the model repository; None if it has none)."""
    return Serving(store, embedder, load_calibration(embedder.version, settings.model_repository,
                                                     settings.model_name))


@dataclass
class SwitchProgress:
    target: str  # `encoder/N`
    done: int = 0  # records of the live store copied so far (re-embedded, or found in the new store)
    task: asyncio.Task[None] | None = None


RETIRE_AFTER_S = 30.0  # a replaced pair stays open this long for the requests that read it before the cut-over


class Live:
    def __init__(self, serving: Serving, retire_after_s: float = RETIRE_AFTER_S) -> None:
        self.serving = serving
        self.writes = asyncio.Lock()
        self.switch: SwitchProgress | None = None
        self.last_switch_error = ""
        self.retire_after_s = retire_after_s
        self._retiring: dict[asyncio.Task[None], Serving] = {}

    def cut_over(self, new: Serving) -> None:
        """Serve `new` from the next request on. The caller holds `writes` (no write may land in the old store
        after the new one copied its state); the old pair is closed `retire_after_s` later."""
        assert self.writes.locked(), "cut_over needs Live.writes"
        old, self.serving = self.serving, new
        task = asyncio.create_task(self._retire(old), name=f"retire-{old.embedder.model_version}")
        self._retiring[task] = old
        task.add_done_callback(lambda done: self._retiring.pop(done, None))
        log.info("serving %s (was %s)", new.embedder.model_version, old.embedder.model_version)

    async def _retire(self, old: Serving) -> None:
        await asyncio.sleep(self.retire_after_s)  # requests that started on the old pair finish first
        await _close(old)

    async def close(self) -> None:
        """At shutdown: stop a running switch (it resumes at the next SwitchModel: the new store is durable),
        close the pairs waiting for retirement and the served one (after a snapshot: the next start is fast)."""
        if self.switch is not None and self.switch.task is not None:
            self.switch.task.cancel()
        for task, old in list(self._retiring.items()):
            task.cancel()
            await _close(old)
        await asyncio.to_thread(self.serving.store.snapshot)
        await _close(self.serving)


async def _close(pair: Serving) -> None:
    await asyncio.to_thread(pair.store.close)
    await pair.embedder.close()
