"""The live (store, encoder) pair, replaced as ONE reference so a request that read it never mixes two models.

Every store write holds `Live.writes`; a model switch's cut-over holds it too, so no write lands in the old store
after the new one has copied its state. `switch` reports the progress of a running model switch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from server.core.config import Settings
from server.embedding.encoder import EncoderClient
from server.models.calibration import Calibration, load_calibration
from server.store.base import VectorStore

FALLBACK_DUPLICATE_THRESHOLD = 0.87  # chosen on photo pairs before per-version calibration (issue 16)


@dataclass(frozen=True)
class Serving:
    store: VectorStore
    encoder: EncoderClient
    calibration: Calibration | None = None  # the encoder version's duplicate threshold and relevance calibrator

    def duplicate_threshold(self, configured: float | None) -> float:
        """An explicit setting wins; else the version's calibrated threshold; else the old photo-based one."""
        if configured is not None:
            return configured
        return self.calibration.duplicate_threshold if self.calibration else FALLBACK_DUPLICATE_THRESHOLD


def serving(store: VectorStore, encoder: EncoderClient, settings: Settings) -> Serving:
    """The pair with its encoder version's calibration (from the model repository; None if it has none)."""
    return Serving(store, encoder, load_calibration(encoder.version or "", settings.model_repository,
                                                    settings.model_name))


@dataclass
class SwitchProgress:
    target: str  # `encoder/N`
    done: int = 0  # images re-embedded so far; the total is the live store's `added_total()`
    task: asyncio.Task[None] | None = None


class Live:
    def __init__(self, serving: Serving) -> None:
        self.serving = serving
        self.writes = asyncio.Lock()
        self.switch: SwitchProgress | None = None
        self.last_switch_error = ""
