"""Abandoned huge-schema requests beside another tenant: what the tenant's 1-token request waits.

N clients each send a chat request whose `response_format` schema is `--schema-kb` kB (351 kB: the
size a tester found holding `/health` for 8.8 s) and hang up after `--abandon-s` seconds; one
second in, another tenant sends a plain 1-token request. Measured: that request's latency (capped
at `--cap-s`), the slowest `/health` answer meanwhile (polled twice a second), what each abandoning
client heard before it hung up, and the server's CPU seconds in the `--after-s` seconds after every
client had gone (work kept going for nobody).

    python -m bench.bounded_work [--code /tmp/before] [--clients 6] [--schema-kb 351]

`--code` runs another checkout's server (e.g. `git worktree add /tmp/before 747fb16`), so the same
load measures before and after. Results: bench/results/bounded_work[-<label>].json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import MODEL, REPO, R3Server, save, table

ASK = [{"role": "user", "content": "Say hi."}]


def schema_of(kilobytes: int) -> dict[str, Any]:
    """An object schema of plain string properties, about `kilobytes` kB as JSON."""
    count = kilobytes * 1024 // 100
    return {"type": "object", "properties": {f"field_{i:05d}": {"type": "string", "description": "a field " * 6}
                                             for i in range(count)}}


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of process `pid` and its children (Linux /proc)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # a process that ended meanwhile
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


async def abandon(client: httpx.AsyncClient, schema: dict[str, Any], after_s: float) -> str:
    """Send a chat request held to `schema` and hang up after `after_s` s; what was heard by then."""
    body = {"model": MODEL, "messages": ASK, "max_tokens": 1,
            "response_format": {"type": "json_schema", "json_schema": {"name": "big", "schema": schema}}}
    try:
        response = await client.post("/v1/chat/completions", json=body, timeout=after_s)
    except httpx.TimeoutException:
        return "hung up"
    return str(response.status_code)


async def tenant(client: httpx.AsyncClient, cap_s: float) -> float | None:
    """Another tenant's 1-token request, one second in: its latency in s (None: over `cap_s`)."""
    await asyncio.sleep(1)
    started = time.perf_counter()
    try:
        response = await client.post("/v1/chat/completions", json={"model": MODEL, "messages": ASK, "max_tokens": 1},
                                     timeout=cap_s)
    except httpx.TimeoutException:
        return None
    assert response.status_code == 200, response.text
    return time.perf_counter() - started


async def slowest_health(client: httpx.AsyncClient, done: asyncio.Event, cap_s: float) -> float:
    """The slowest `/health` answer, polled twice a second until `done`."""
    slowest = 0.0
    while not done.is_set():
        started = time.perf_counter()
        try:
            await client.get("/health", timeout=cap_s)
        except httpx.TimeoutException:
            pass
        slowest = max(slowest, time.perf_counter() - started)
        await asyncio.sleep(0.5)
    return slowest


async def measure(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    schema = schema_of(args.schema_kb)
    async with httpx.AsyncClient(base_url=url) as client:
        baseline = await tenant(client, args.cap_s)  # also warms the engine up
        done = asyncio.Event()
        health = asyncio.create_task(slowest_health(client, done, args.cap_s))
        heard, latency = await asyncio.gather(
            asyncio.gather(*(abandon(client, schema, args.abandon_s) for _ in range(args.clients))),
            tenant(client, args.cap_s))
        done.set()
        slowest = await health
        before = cpu_seconds(pid)
        await asyncio.sleep(args.after_s)
        burned = cpu_seconds(pid) - before
    return {"schema_bytes": len(json.dumps(schema)), "clients": args.clients, "abandon_s": args.abandon_s,
            "tenant_alone_s": baseline, "tenant_s": latency, "cap_s": args.cap_s, "slowest_health_s": slowest,
            "abandoners_heard": heard, "cpu_s_after_clients_left": burned, "after_s": args.after_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose server runs")
    parser.add_argument("--label", default="", help="suffix of the result file (e.g. before)")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--schema-kb", type=int, default=351)
    parser.add_argument("--abandon-s", type=float, default=5.0)
    parser.add_argument("--cap-s", type=float, default=120.0)
    parser.add_argument("--after-s", type=float, default=20.0)
    args = parser.parse_args()
    server = R3Server({"R3_TRAINER": "off", "R3_MAX_BATCH_SIZE": "4"}, code=args.code.resolve())
    with server as url:
        result = asyncio.run(measure(url, server.process.pid, args))
    path = save("bounded_work" + (f"-{args.label}" if args.label else ""), {"code": str(args.code), **result})
    tenant_s = "over the cap" if result["tenant_s"] is None else f"{result['tenant_s']:.2f}"
    table(["schema kB", "clients", "tenant alone s", "tenant s", "slowest /health s", "abandoners heard",
           f"CPU s in {args.after_s:g} s after"],
          [[result["schema_bytes"] // 1024, args.clients, result["tenant_alone_s"], tenant_s,
            result["slowest_health_s"], ", ".join(sorted(set(result["abandoners_heard"]))),
            result["cpu_s_after_clients_left"]]])
    print(path)


if __name__ == "__main__":
    main()
