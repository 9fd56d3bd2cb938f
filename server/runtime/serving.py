"""The live (store, encoder) pair, replaced as ONE reference so a request that read it never mixes two models.

Every store write holds `Live.writes`; a model switch's cut-over holds it too, so no write lands in the old store
after the new one has copied its state. `switch` reports the progress of a running model switch.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from server.embedding.encoder import EncoderClient
from server.store.base import VectorStore


@dataclass(frozen=True)
class Serving:
    store: VectorStore
    encoder: EncoderClient


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
