"""Move an embedded corpus into Milvus: every record of the FAISS catalog of the served version (vectors,
owners, visibility, deletions, content hashes: the originals stay where they are, addressed by hash) into that
version's Milvus collection; then the counts are checked and the live alias is pointed at it.

    vsearch migrate-to-milvus --milvus-uri http://host:19530 [--data-dir var] [--milvus-prefix vsearch]

Region rows come along: a catalog created with regions gets a collection with regions, every image with its whole
row and its region rows, and every page is checked image by image (1 + R stored rows each) before the next one.
Resumable: a rerun after an interruption skips what is there (`add` returns False for existing IDs; the store
writes an image's region rows before its whole row, so an image that exists is complete) and re-applies deletions.
Afterwards start the gateways with --index-backend milvus and --blob-url pointing at <data-dir>/blobs (or
where the originals were copied to).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, cast

from server.core.config import Settings
from server.embedding.contract import EMBEDDING_DIM
from server.store.base import EmbeddedImage, Store
from server.store.catalogs import open_store, read_active_version, write_active_version

CHUNK = 500


class Target(Store, Protocol):
    def rows_per_image(self, image_ids: Sequence[str]) -> dict[str, int]:
        """Stored rows of each image (whole + regions); images it does not hold are absent."""
        ...


def migrate(source: Store, target: Target, progress: Callable[[int], None] = lambda _: None) -> int:
    """Copy every record of `source` into `target` (same model version), page by page; returns the records read."""
    if source.model_version != target.model_version:
        raise ValueError(f"{source.model_version} cannot be copied into a store of {target.model_version}")
    if source.regions_per_image != target.regions_per_image:
        raise ValueError(f"the catalog keeps {source.regions_per_image} region rows per image, the target collection "
                         f"{target.regions_per_image}: drop the target's collections and migrate again")
    copied, cursor, done = 0, None, False
    while not done:
        page = source.scan(cursor, CHUNK)
        cursor, done = page.cursor, page.done
        known = target.known([r.image_id for r in page.records])
        rows = source.rows([r for r in page.records if r.image_id not in known])
        if rows:
            target.add([EmbeddedImage(r.record.image_id, r.record.owner_id, r.record.visibility,
                                      r.record.content_hash, r.vector, r.regions) for r in rows])
        deleted = [r.image_id for r in page.records if r.deleted]
        if deleted:  # re-applied on a rerun too (a no-op for what is deleted already)
            target.delete(deleted)
        stored = target.rows_per_image([r.image_id for r in page.records])
        wrong = {r.image_id: stored.get(r.image_id, 0) for r in page.records
                 if stored.get(r.image_id, 0) != 1 + target.regions_per_image}
        if wrong:
            raise RuntimeError(f"{len(wrong)} images were not copied whole (stored rows, want "
                               f"{1 + target.regions_per_image}): {dict(list(wrong.items())[:5])}")
        copied += len(page.records)
        progress(len(page.records))
    return copied


def migrate_catalog(settings: Settings, milvus_uri: str, dim: int = EMBEDDING_DIM) -> dict[str, object]:
    """The served FAISS catalog of `settings.data_dir` into Milvus; counts checked; the alias points at it."""
    version = read_active_version(settings)
    if version is None:
        raise ValueError(f"no served catalog under {settings.data_dir} (no ACTIVE_MODEL)")
    source = open_store(settings.with_overrides(index_backend="faiss"), version, dim)
    on_milvus = settings.with_overrides(index_backend="milvus", milvus_uri=milvus_uri,
                                        index_regions=source.regions_per_image > 0)
    target = open_store(on_milvus, version, dim)
    try:
        copied = migrate(source, cast(Target, target))  # a Milvus store: it counts rows per image
        want, got = source.stats().counts, target.stats().counts
        if (want.public, want.private, want.deleted) != (got.public, got.private, got.deleted):
            raise RuntimeError(f"counts differ after the copy: FAISS {want}, Milvus {got}")
        write_active_version(on_milvus, version)
        return {"model_version": version, "records": copied, "counts": got}
    finally:
        source.close()
        target.close()
