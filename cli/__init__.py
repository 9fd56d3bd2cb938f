"""The `vsearch` command: the operator CLI (serve, index, search, visibility, model versions, migration,
the demo)."""
