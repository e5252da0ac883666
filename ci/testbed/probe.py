#!/usr/bin/env python3
"""The latency probe, in its own process (run at real-time priority, so the burst's own CPU load
does not show up as network delay).

Usage: probe.py echo SERVER PORT           -- the UDP echo, in the server namespace
       probe.py send SERVER PORT INTERVAL  -- pings every INTERVAL seconds until SIGTERM, then
                                              prints [[sent_at_monotonic, rtt_ms or null], ...]
"""
import json
import select
import signal
import socket
import struct
import sys
import time


def echo(server, port):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((server, port))
    print("ready", flush=True)
    while True:
        data, addr = sock.recvfrom(2048)
        sock.sendto(data, addr)


def send(server, port, interval):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((server, port))
    sock.setblocking(False)
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    sent, replies = {}, {}
    seq = 0
    next_at = time.monotonic()
    print("ready", flush=True)
    stop_at = None
    while True:
        now = time.monotonic()
        if not running[0] and stop_at is None:
            stop_at = now + 1.0  # late replies still count; later ones are losses
        if stop_at is not None and now >= stop_at:
            break
        if stop_at is None and now >= next_at:
            sent[seq] = now
            sock.send(struct.pack("!Id", seq, now) + bytes(52))
            seq += 1
            next_at += interval
        timeout = max(0.0, min(next_at, stop_at or next_at) - time.monotonic())
        readable, _, _ = select.select([sock], [], [], timeout)
        if readable:
            while True:
                try:
                    data = sock.recv(2048)
                except BlockingIOError:
                    break
                number, at = struct.unpack("!Id", data[:12])
                replies[number] = time.monotonic() - at
    samples = [[at, None if replies.get(n) is None else replies[n] * 1000.0] for n, at in sent.items()]
    print(json.dumps(samples), flush=True)


if __name__ == "__main__":
    mode, server, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "echo":
        echo(server, port)
    else:
        send(server, port, float(sys.argv[4]))
