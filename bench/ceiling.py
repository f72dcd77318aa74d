"""Mode (c): the bare Starlette JSON endpoint that bounds what (b) can reach.

Served exactly as `asyncproc serve` serves the app (uvicorn.run, same loop and
HTTP protocol, `asyncproc.corked_http` included, access log off), at the same path as the enqueue call, so
the same wrk script drives both.
"""

from __future__ import annotations

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asyncproc.corked_http import http_protocol

__all__ = ["app", "serve"]


async def enqueue(request: Request) -> Response:
    """Read the body and answer a small JSON document, as enqueue does."""
    body = await request.body()
    return JSONResponse({"kind": request.path_params["kind"], "size": len(body)}, 202)


async def health(request: Request) -> Response:
    """Ready probe."""
    return JSONResponse({"status": "ok"})


app = Starlette(
    routes=[
        Route("/health", health, methods=["GET"]),
        Route("/api/{kind}/enqueue", enqueue, methods=["POST"]),
    ]
)


def serve(host: str, port: int, corked: bool = True) -> None:
    """Serve the ceiling app until interrupted (the settings of `asyncproc serve`;
    `corked=False`: uvicorn's own protocol, the setup before `asyncproc.corked_http`)."""
    uvicorn.run(
        app,
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        http=http_protocol() if corked else "auto",
    )
