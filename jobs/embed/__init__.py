"""Batch embedding at corpus scale: a Ray Data job, one module per stage.

reader.py (manifest, shards, bytes) -> mapper.py (prepare task, embed actors) -> writer.py (shard files,
VectorStore) ; runner.py wires them and is the CLI (`python -m jobs.embed`). adapters.py is the only module
that imports `server/`.
"""
