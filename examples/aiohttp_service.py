"""
An aiohttp service that edits images, with the callback receiver mounted in its own app.

    python -m seedream_async.simulator --port 8080 &          # or a real key, no base URL
    APIKLEY_API_KEY=demo APIKLEY_BASE_URL=http://127.0.0.1:8080 \
        python examples/aiohttp_service.py --port 8000 --public-url http://127.0.0.1:8000
    curl -X POST 'http://127.0.0.1:8000/edit?prompt=blue&image=https://example.com/a.png'

One client per process, opened and closed with the app. On shutdown the receiver tells the
client that no callback can arrive any more, so requests still waiting are answered by
polling at once (the mounted receiver does this by itself on the app's ``on_shutdown``).
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

from aiohttp import web

from seedream_async import CallbackReceiver, SeedreamClient, SeedreamError

CLIENT = web.AppKey("client", SeedreamClient)


async def edit(request: web.Request) -> web.Response:
    client = request.app[CLIENT]
    try:
        result = await client.edit(
            prompt=request.query["prompt"], image_urls=request.query.getall("image")
        )
    except KeyError:
        raise web.HTTPBadRequest(text="prompt and image are required") from None
    except SeedreamError as e:
        return web.json_response({"error": type(e).__name__, "message": str(e)}, status=502)
    return web.json_response({"task_id": result.task_id, "urls": [str(u) for u in result.urls]})


def make_app(public_url: str) -> web.Application:
    receiver = CallbackReceiver(host=None, public_url=public_url)
    app = web.Application()
    app.add_subapp("/hooks", receiver.app)  # the service calls {public_url}/hooks/seedream/…

    async def client_context(app: web.Application) -> AsyncIterator[None]:
        async with SeedreamClient(callbacks=receiver) as client:
            app[CLIENT] = client
            yield

    app.cleanup_ctx.append(client_context)
    app.router.add_post("/edit", edit)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--public-url", help="what the service calls back (default: host:port)")
    args = parser.parse_args()
    public_url = args.public_url or f"http://{args.host}:{args.port}"
    web.run_app(make_app(f"{public_url}/hooks"), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
