"""
A FastAPI service that edits images, with the callback receiver mounted as an ASGI app.

    pip install 'seedream-async' fastapi uvicorn
    python -m seedream_async.simulator --port 8080 &          # or a real key, no base URL
    APIKLEY_API_KEY=demo APIKLEY_BASE_URL=http://127.0.0.1:8080 \
        PUBLIC_URL=http://127.0.0.1:8000 python examples/fastapi_service.py --port 8000
    curl -X POST 'http://127.0.0.1:8000/edit?prompt=blue&image_url=https://example.com/a.png'

The lifespan opens and closes the one client of the process. uvicorn runs the lifespan's
shutdown only after in-flight requests end, so the server tells the receiver at the signal
itself: requests still waiting for a callback are then answered by polling at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator
from types import FrameType

import uvicorn
from fastapi import FastAPI, HTTPException

from seedream_async import CallbackReceiver, SeedreamClient, SeedreamError

PUBLIC_URL = os.environ.get("PUBLIC_URL", "http://127.0.0.1:8000")

receiver = CallbackReceiver(host=None, public_url=PUBLIC_URL)
client = SeedreamClient(callbacks=receiver)


@contextlib.asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    async with client:
        yield


app = FastAPI(lifespan=lifespan)
app.mount(receiver.path, receiver.asgi_app())


@app.post("/edit")
async def edit(prompt: str, image_url: str) -> dict[str, object]:
    try:
        result = await client.edit(prompt=prompt, image_urls=[image_url])
    except SeedreamError as e:
        raise HTTPException(502, f"{type(e).__name__}: {e}") from e
    return {"task_id": result.task_id, "urls": [str(url) for url in result.urls]}


class Server(uvicorn.Server):
    """uvicorn, telling the receiver at the signal that callbacks can no longer arrive."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        receiver.stop_callbacks()  # safe in a signal handler
        super().handle_exit(sig, frame)


def main() -> None:
    parser = argparse.ArgumentParser(description="A FastAPI service editing images.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    Server(uvicorn.Config(app, host=args.host, port=args.port, ws="none")).run()


if __name__ == "__main__":
    main()
