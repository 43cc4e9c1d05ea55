"""
One replica of a service, as a real process, for the fleet tests.

``python -m tests.fleet_worker SIM_URL REDIS_URL NAMESPACE PUBLIC_URL [--resume ID ...]``
prints ``{"listen": URL}``, waits for a line on stdin, then either submits ``--edits`` edits
(``{"accepted": ID}`` as each is accepted) or resumes the given task ids, and ends with
``{"done": [ids of finished tasks], "urls": [their result URLs]}``. Every line is JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from seedream_async import (
    CallbackReceiver,
    EditRequest,
    PollSchedule,
    RedisCoordinator,
    SeedreamClient,
    Settings,
)


def say(**line: object) -> None:
    print(json.dumps(line), flush=True)


async def main(args: argparse.Namespace) -> None:
    settings = Settings(
        create_rate=args.rate,
        create_period=args.period,
        create_attempts=2,
        query_rate=50,
        poll_schedule=PollSchedule(steps=((float("inf"), 0.2),)),
        safety_poll_after=600.0,  # out of reach: results come by callback (or Redis)
        safety_poll_every=600.0,
        allow_private_downloads=True,
        backoff_initial=0.01,
    )
    receiver = CallbackReceiver(public_url=args.public_url)
    coordinator = RedisCoordinator(args.redis_url, namespace=args.namespace)
    async with SeedreamClient(
        "fleet-key", base_url=args.sim_url, callbacks=receiver, coordinator=coordinator,
        settings=settings,
    ) as client:  # fmt: skip
        await client.credits()
        say(listen=str(receiver.local_url))
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        if args.resume:
            handles = [client.resume(task_id) for task_id in args.resume]
        else:
            handles = []
            for n in range(args.edits):
                prompt = f"{args.name} edit {n}"
                handle = await client.submit(
                    EditRequest(prompt=prompt, image_urls=[f"https://img.example/{n}.png"])
                )
                say(accepted=handle.task_id)
                handles.append(handle)
        results = await asyncio.gather(*(h.result() for h in handles))
        say(done=[r.task_id for r in results], urls=[[str(u) for u in r.urls] for r in results])
        await asyncio.sleep(args.linger)  # keep serving callbacks for the others


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("sim_url")
    parser.add_argument("redis_url")
    parser.add_argument("namespace")
    parser.add_argument("public_url")
    parser.add_argument("--name", default="worker")
    parser.add_argument("--edits", type=int, default=10)
    parser.add_argument("--rate", type=int, default=10)
    parser.add_argument("--period", type=float, default=0.5)
    parser.add_argument("--resume", nargs="*", default=[])
    parser.add_argument("--linger", type=float, default=0.0)
    asyncio.run(main(parser.parse_args()))


if __name__ == "__main__":
    cli()
