#!/usr/bin/env python3
"""The near side of the testbed, run in the client namespace: a Terraform-like burst (the
latency probe runs beside it in its own process, probe.py).

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
    # Burst: tunnels and bulk uploads together.
    results = []
    bulk_results = []
    burst_began = time.monotonic()
    bulk = [bulk_upload(config, i, bulk_results, burst_began) for i in range(config["bulk_uploads"])]
    limit = asyncio.Semaphore(config["parallel"])

    async def limited(index):
        async with limit:
            await tunnel(config, index, results, burst_began)

    try:
        await asyncio.wait_for(asyncio.gather(*bulk, *(limited(i) for i in range(config["tunnels"]))),
                               timeout=config["timeout_seconds"])
    except asyncio.TimeoutError:
        print("burst timed out", file=sys.stderr)
    burst_ended = time.monotonic()
    print(json.dumps({
        "idle_began": idle_began,
        "idle_ended": idle_ended,
        "tunnels": results,
        "burst_began": burst_began,
        "burst_ended": burst_ended,
        "bulk": bulk_results,
    }))


asyncio.run(main())
