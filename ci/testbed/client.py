#!/usr/bin/env python3
"""The near side of the testbed, run in the client namespace: a Terraform-like burst, or
continuous flows for a fixed time (config "continuous"), and optionally downloads that do not go
through the proxy beside either (config "direct_downloads": another program on the machine).
The latency probe runs beside it in its own process, probe.py.

Usage: client.py CONFIG_JSON   (prints a JSON result on stdout)
"""
import asyncio
import json
import struct
import sys
import time


async def open_stream(config, port):
    proxy = config["proxy"]
    target = f"{config['server']}:{port}"
    if proxy is None:
        return await asyncio.open_connection(config["server"], port)
    host, proxy_port = proxy.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(proxy_port))
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(head.decode(errors="replace").splitlines()[0])
    return reader, writer


ENDLESS = 0xFFFFFFFF


async def stream_until(config, direction, deadline, results, started_at, via_proxy=True):
    """One flow that moves data one way until `deadline` (monotonic) or until told to stop."""
    begin = time.monotonic()
    moved = 0
    ok = True
    try:
        proxied = dict(config, proxy=config["proxy"] if via_proxy else None)
        reader, writer = await open_stream(proxied, config["burst_port"])
        writer.write(struct.pack("!II", ENDLESS if direction == "up" else 0,
                                 ENDLESS if direction == "down" else 0))
        chunk = bytes(64 * 1024)
        while time.monotonic() < deadline[0]:
            if direction == "up":
                writer.write(chunk)
                await writer.drain()
                moved += len(chunk)
            else:
                try:
                    data = await asyncio.wait_for(reader.read(65536),
                                                  max(0.01, deadline[0] - time.monotonic()))
                except asyncio.TimeoutError:
                    break
                if not data:
                    ok = False
                    break
                moved += len(data)
        writer.close()
    except (ConnectionError, OSError) as error:
        ok = False
        print(f"flow {direction}: {error}", file=sys.stderr)
    results.append({"direction": direction, "proxied": via_proxy, "ok": ok, "bytes": moved,
                    "start": begin - started_at, "end": time.monotonic() - started_at})


async def tunnel(config, index, results, started_at):
    up, down = config["up_bytes"], config["down_bytes"]
    begin = time.monotonic()
    try:
        reader, writer = await open_stream(config, config["burst_port"])
        writer.write(struct.pack("!II", up, down))
        chunk = bytes(16 * 1024)
        sent = 0
        while sent < up:
            n = min(len(chunk), up - sent)
            writer.write(chunk[:n])
            await writer.drain()
            sent += n
        received = 0
        while received < down:
            data = await reader.read(65536)
            if not data:
                break
            received += len(data)
        writer.close()
        ok = received == down
    except (ConnectionError, OSError, asyncio.IncompleteReadError) as error:
        ok = False
        print(f"tunnel {index}: {error}", file=sys.stderr)
    end = time.monotonic()
    results.append({"index": index, "start": begin - started_at, "end": end - started_at, "ok": ok,
                    "bytes": up + down})


async def bulk_upload(config, index, results, started_at):
    """A large upload that starts with the burst (a state file, an artifact): the burst is over
    only when it has arrived, so a proxy that starves it or holds it below the rate shows."""
    size = config["bulk_upload_bytes"]
    begin = time.monotonic()
    try:
        reader, writer = await open_stream(config, config["burst_port"])
        writer.write(struct.pack("!II", size, 0))
        chunk = bytes(64 * 1024)
        sent = 0
        while sent < size:
            n = min(len(chunk), size - sent)
            writer.write(chunk[:n])
            await writer.drain()
            sent += n
        # The server closes once it has read everything.
        ok = await reader.read(1) == b""
        writer.close()
    except (ConnectionError, OSError) as error:
        ok = False
        print(f"bulk {index}: {error}", file=sys.stderr)
    end = time.monotonic()
    results.append({"index": index, "start": begin - started_at, "end": end - started_at, "ok": ok,
                    "bytes": size})


async def main():
    config = json.loads(sys.argv[1])
    # Idle: the probe (a separate process) runs alone.
    idle_began = time.monotonic()
    await asyncio.sleep(config["idle_seconds"])
    idle_ended = time.monotonic()
    # Burst: tunnels and bulk uploads together (or continuous flows), and downloads that do
    # not go through the proxy, until the burst ends.
    results = []
    bulk_results = []
    flows = []
    burst_began = time.monotonic()
    deadline = [burst_began + config["timeout_seconds"]]
    direct = [stream_until(config, "down", deadline, flows, burst_began, via_proxy=False)
              for _ in range(config.get("direct_downloads", 0))]
    direct_tasks = [asyncio.ensure_future(flow) for flow in direct]
    continuous = config.get("continuous")
    if continuous:
        deadline[0] = burst_began + continuous["seconds"]
        work = [stream_until(config, way, deadline, flows, burst_began)
                for way in ("up", "down") for _ in range(continuous[way])]
    else:
        bulk = [bulk_upload(config, i, bulk_results, burst_began)
                for i in range(config["bulk_uploads"])]
        limit = asyncio.Semaphore(config["parallel"])

        async def limited(index):
            async with limit:
                await tunnel(config, index, results, burst_began)

        work = [*bulk, *(limited(i) for i in range(config["tunnels"]))]
    try:
        await asyncio.wait_for(asyncio.gather(*work), timeout=config["timeout_seconds"])
    except asyncio.TimeoutError:
        print("burst timed out", file=sys.stderr)
    burst_ended = time.monotonic()
    deadline[0] = burst_ended
    if direct_tasks:
        await asyncio.wait(direct_tasks, timeout=10)
    print(json.dumps({
        "idle_began": idle_began,
        "idle_ended": idle_ended,
        "tunnels": results,
        "burst_began": burst_began,
        "burst_ended": burst_ended,
        "bulk": bulk_results,
        "flows": flows,
    }))


asyncio.run(main())
