"""A page at ``GET /`` (``make run``: the sample client) and the ES modules beside it at
``GET /<name>.js`` (the page imports ``./ws-broadcast.js``); nothing else of its folder.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web


class Page:
    def __init__(self, path: Path) -> None:
        self._path = path

    def file_for(self, request_path: str) -> Path | None:
        """The page at ``/``, or a module beside it (one name, ``.js``); None for any other path."""
        if request_path == "/":
            return self._path
        name = request_path[1:]
        if "/" in name or not name.endswith(".js") or name.startswith("."):
            return None
        module = self._path.parent / name
        return module if module.is_file() else None

    def response(self, request: web.Request) -> web.FileResponse | None:
        """The file a ``GET`` asks for, or None: the request is not the page's."""
        if request.method != "GET" or (served := self.file_for(request.path)) is None:
            return None
        return web.FileResponse(served)


__all__ = ["Page"]
