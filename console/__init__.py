"""The operators' web console: a client of the gateway's gRPC API (console/app.py)."""
