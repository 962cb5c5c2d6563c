"""localgw: a local stand-in for API Gateway WebSocket APIs that serves any Chalice WebSocket app.

Run ``python -m localgw --help``. Development only: never deployed, never imported by ``chalicelib``.
"""
