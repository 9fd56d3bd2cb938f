"""Bulk indexing of files through the gateway: resumable (a state file of acknowledged IDs) and idempotent."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from cli.output import CliError, read_file
from clients.client import NewImage, VisualSearchClient
from devkit.corpus import IMAGE_SUFFIXES
from server.embedding.contract import EMBED_CHUNK


def collect(paths: list[Path]) -> list[tuple[str, Path]]:
    """(image ID, file): IDs are paths relative to the argument directory, without the suffix."""
    items = []
    for root in paths:
        if root.is_file():
            items.append((root.stem, root))
        elif root.is_dir():
            items += [(str(p.relative_to(root).with_suffix("")), p) for p in sorted(root.rglob("*"))
                      if p.suffix.lower() in IMAGE_SUFFIXES | {".gif"} and p.is_file()]
        else:
            raise CliError(f"no such file or directory: {root}")
    return items


def index_files(client: VisualSearchClient, items: list[tuple[str, Path]], state_file: Path,
                private: bool = False, batch: int = EMBED_CHUNK) -> dict[str, int]:
    """Resumable: IDs acknowledged earlier (in the state file) are skipped; re-sending is harmless anyway."""
    done = set(state_file.read_text().split("\n")) if state_file.exists() else set()
    todo = [(i, p) for i, p in items if i not in done]
    totals = {"added": 0, "already_exists": 0, "rejected": 0, "skipped": len(items) - len(todo)}
    state_file.parent.mkdir(parents=True, exist_ok=True)
    with state_file.open("a") as state, tqdm(total=len(todo), unit="img", desc="indexing") as bar:
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            response = client.add_images(NewImage(i, read_file(p), private=private) for i, p in chunk)
            for result in response.results:
                if result.status == result.REJECTED:
                    totals["rejected"] += 1
                    tqdm.write(f"rejected {result.image_id}: {result.error_code} {result.error_message}")
                    continue
                totals["added" if result.status == result.ADDED else "already_exists"] += 1
                state.write(result.image_id + "\n")
            state.flush()
            bar.update(len(chunk))
    return totals
