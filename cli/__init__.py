"""The `vsearch` command: the operator CLI (serve, index, search, visibility, model versions, tokens,
migration, the demo)."""
