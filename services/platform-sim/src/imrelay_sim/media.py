"""The simulator's media routes: files users send (put in with ``POST /sim/media``, served by every
platform's simulated download API) and files bots upload (kept by the platforms' simulated upload APIs).

* ``POST /sim/media?name=&kind=[&mime=]`` with the bytes: stored, answered ``{id, size, sha256, md5, mime}``.
* ``GET /sim/media/{id}``: the bytes (where a platform hands out a URL, the simulator's URL is this one).
* ``GET /sim/media`` lists what is stored (without the bytes), ``?origin=upload`` what bots uploaded.

The store itself is :mod:`imrelay.media.simstore` (the platforms' simulated APIs use it too).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from imrelay.media.simstore import MAX_SIM_MEDIA, MediaItem, get, put

__all__ = ["MediaItem", "routes"]


def routes(state: Any) -> list[Route]:
    async def upload(request: Request) -> Response:
        body = await request.body()
        if len(body) > MAX_SIM_MEDIA:
            return JSONResponse({"error": "too large for the simulator"}, status_code=413)
        q = request.query_params
        item = put(
            state,
            body,
            name=q.get("name", "file.bin"),
            kind=q.get("kind", "file"),
            origin="user",
            mime=q.get("mime"),
        )
        return JSONResponse(item.describe())

    async def download(request: Request) -> Response:
        item = get(state, request.path_params["id"])
        if item is None:
            return JSONResponse({"error": "no such media"}, status_code=404)
        return Response(item.data, media_type=item.mime)

    async def listing(request: Request) -> Response:
        origin = request.query_params.get("origin")
        return JSONResponse([i.describe() for i in state.media.values() if origin in (None, i.origin)])

    return [
        Route("/sim/media", upload, methods=["POST"]),
        Route("/sim/media", listing, methods=["GET"]),
        Route("/sim/media/{id}", download, methods=["GET"]),
    ]
