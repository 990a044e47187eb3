"""The dev server's HTTP side: aiohttp in front of `serving.rest_api`.

Why aiohttp: its HTTP/1.1 parser is llhttp (Node.js's, in C), it is actively maintained,
and it has what a server facing clients needs built in: a request-body limit
(`client_max_size`), keep-alive, an access log, and graceful shutdown that lets
in-flight requests finish. The stdlib `http.server` (and werkzeug's dev server, built on
it) parses HTTP by hand in Python and has no body limit. Model work never runs on the
event loop: each request is parsed, run and formatted in a thread pool, where
`Session.run` releases the GIL, so requests run in parallel as in TF Serving's
`--rest_api_num_threads` pool.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal

from aiohttp import web

from serving import rest_api
from tfvctr.errors import TfvctrError

access_log = logging.getLogger("tfvctr.serve.access")
log = logging.getLogger("tfvctr.serve")

# One line per request: peer, request line, status, response bytes, seconds.
ACCESS_LOG_FORMAT = '%a "%r" %s %b %Tf'


def make_app(manager, *, max_body_bytes: int, timeout_ms: int, executor: concurrent.futures.Executor) -> web.Application:
    """The aiohttp application answering every path as TF Serving's HTTP server does."""

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?", 1)[0]
        if not rest_api.is_rest_path(path):
            # TF Serving's HTTP server answers paths outside /v1/ with its own 404, not JSON.
            return web.Response(status=404, text="Not Found\n", content_type="text/plain")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            # TF Serving sets no limit of its own; ours protects a laptop's memory. 413 is
            # the HTTP status for it; the body stays TF Serving's error document.
            return _json(413, rest_api.error_body(f"Request body is larger than the limit of {max_body_bytes} bytes"))
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(executor, rest_api.process, request.method, path, body, manager, timeout_ms)
        try:
            status, text = await asyncio.wait_for(work, timeout=timeout_ms / 1000 + 1.0)
        except asyncio.TimeoutError:
            # The session's own RunOptions timeout normally fires first (DEADLINE_EXCEEDED);
            # this is the backstop for time spent outside the session.
            return _json(504, rest_api.error_body(f"Request timed out after {timeout_ms} ms"))
        return _json(status, text)

    app = web.Application(client_max_size=max_body_bytes)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _json(status: int, text: str) -> web.Response:
    # Exactly TF Serving's header (AddHeaders): no charset parameter.
    return web.Response(status=status, body=text.encode("utf-8"), headers={"Content-Type": "application/json"})


async def serve(
    manager,
    *,
    host: str = "127.0.0.1",
    port: int = 8501,
    threads: int = 8,
    max_body_bytes: int = 32 << 20,
    timeout_ms: int = 30_000,
    on_ready=None,
) -> None:
    """Serves until SIGTERM or SIGINT, then stops accepting, drains requests and unloads."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rest")
    app = make_app(manager, max_body_bytes=max_body_bytes, timeout_ms=timeout_ms, executor=executor)
    runner = web.AppRunner(app, access_log=access_log, access_log_format=ACCESS_LOG_FORMAT, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, shutdown_timeout=timeout_ms / 1000, reuse_address=True)
    try:
        await site.start()
    except OSError as e:  # port taken, address not on this machine: the user's to fix
        await runner.cleanup()
        executor.shutdown(wait=False)
        manager.stop()  # close the sessions loaded for nothing
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise TfvctrError(f"cannot listen on {host}:{port}: {reason}") from None
    bound = runner.addresses[0][1]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    manager.start()
    if on_ready is not None:
        on_ready(host, bound)
    await stop.wait()
    log.info("shutting down: draining in-flight requests")
    await runner.cleanup()
    manager.stop()
    executor.shutdown(wait=True)
