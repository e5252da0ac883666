#!/usr/bin/env python3
"""The near side of the testbed, run in the client namespace: a Terraform-like burst plus a
latency probe that does not go through the proxy.

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


async def bulk_upload(config, stop, totals, index):
    try:
        _, writer = await open_stream(config, config["sink_port"])
        chunk = bytes(64 * 1024)
        while not stop.is_set():
            writer.write(chunk)
            await writer.drain()
            totals[index] += len(chunk)
        writer.close()
    except (ConnectionError, OSError) as error:
        print(f"bulk {index}: {error}", file=sys.stderr)


class Probe(asyncio.DatagramProtocol):
    def __init__(self):
        self.replies = {}

    def datagram_received(self, data, addr):
        seq, sent = struct.unpack("!Id", data[:12])
        self.replies[seq] = time.monotonic() - sent


async def probe(config, stop, samples, started_at):
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        Probe, remote_addr=(config["server"], config["probe_port"]))
    seq = 0
    sent = {}
    interval = config["probe_interval"]
    next_at = time.monotonic()
    while not stop.is_set():
        now = time.monotonic()
        sent[seq] = now - started_at
        transport.sendto(struct.pack("!Id", seq, now) + bytes(52))
        seq += 1
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    await asyncio.sleep(1.0)  # late replies still count; later ones are losses
    transport.close()
    for number, at in sent.items():
        rtt = protocol.replies.get(number)
        samples.append({"t": at, "rtt_ms": None if rtt is None else rtt * 1000.0})


async def main():
    config = json.loads(sys.argv[1])
    started_at = time.monotonic()
    # Idle: the probe alone.
    idle_samples = []
    stop_idle = asyncio.Event()
    idle_task = asyncio.create_task(probe(config, stop_idle, idle_samples, started_at))
    await asyncio.sleep(config["idle_seconds"])
    stop_idle.set()
    await idle_task
    # Burst: tunnels, bulk uploads and the probe together.
    burst_samples, results = [], []
    stop = asyncio.Event()
    burst_began = time.monotonic() - started_at
    probe_task = asyncio.create_task(probe(config, stop, burst_samples, started_at))
    totals = [0] * config["bulk_uploads"]
    bulk = [asyncio.create_task(bulk_upload(config, stop, totals, i)) for i in range(config["bulk_uploads"])]
    limit = asyncio.Semaphore(config["parallel"])

    async def limited(index):
        async with limit:
            await tunnel(config, index, results, started_at)

    try:
        await asyncio.wait_for(asyncio.gather(*(limited(i) for i in range(config["tunnels"]))),
                               timeout=config["timeout_seconds"])
    except asyncio.TimeoutError:
        print("burst timed out", file=sys.stderr)
    burst_ended = time.monotonic() - started_at
    stop.set()
    await asyncio.gather(probe_task, *bulk)
    print(json.dumps({
        "idle_samples": idle_samples,
        "burst_samples": burst_samples,
        "tunnels": results,
        "burst_began": burst_began,
        "burst_ended": burst_ended,
        "bulk_bytes": totals,
    }))


asyncio.run(main())
