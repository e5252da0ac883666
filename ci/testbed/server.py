#!/usr/bin/env python3
"""The far side of the testbed, run in the server namespace.

Usage: server.py ADDRESS BURST_PORT SINK_PORT
- BURST_PORT: reads UP bytes (8-byte big-endian header: UP, DOWN), then sends DOWN bytes, closes.
- SINK_PORT: reads and discards until EOF.
(The probe's UDP echo runs in its own process: probe.py echo.)
"""
import asyncio
import struct
import sys

CHUNK = bytes(64 * 1024)


async def burst(reader, writer):
    try:
        header = await reader.readexactly(8)
        up, down = struct.unpack("!II", header)
        remaining = up
        while remaining > 0:
            data = await reader.read(min(remaining, 65536))
            if not data:
                return
            remaining -= len(data)
        while down > 0:
            n = min(down, len(CHUNK))
            writer.write(CHUNK[:n])
            await writer.drain()
            down -= n
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def sink(reader, writer):
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    writer.close()


async def main():
    address, burst_port, sink_port = sys.argv[1], *map(int, sys.argv[2:4])
    await asyncio.start_server(burst, address, burst_port, backlog=1024)
    await asyncio.start_server(sink, address, sink_port, backlog=64)
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
