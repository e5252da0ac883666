#!/usr/bin/env python3
"""An emulated home router between two network namespaces, in user space.

This kernel has tbf and htb but neither netem (delay) nor fq_codel, so the whole bottleneck is
emulated here instead: two TUN devices (one moved into the client namespace, one into the server
namespace) joined by this process, which forwards IP packets each way through

    drop-tail queue (QUEUE_BYTES) -> serialisation at RATE_BITS -> propagation delay (DELAY)

like a consumer router whose uplink and downlink are the bottleneck. Counters (packets, bytes,
drops, peak queue, sums of the queue sampled every 10 ms, and the wake-ups the host delayed by
over 20 ms) are written as JSON to STATS_FILE every 100 ms.

Usage: router.py TUN_CLIENT TUN_SERVER RATE_BITS QUEUE_BYTES DELAY_MS STATS_FILE
RATE_BITS is one rate for both directions or UP/DOWN (an asymmetric line). While it runs, the
rates can be changed by writing "UP_BITS DOWN_BITS" to STATS_FILE.rate (a line whose rate
steps down and up). It prints "ready" once both devices exist, and runs until SIGTERM.
"""
import fcntl
import heapq
import json
import os
import select
import signal
import struct
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


# Debugging aid: with FYNTR_ROUTER_TRACE=PATH, every arriving packet's time, direction, first 40
# bytes and the queue it found are kept in memory and written to PATH at exit.
TRACE = [] if os.environ.get("FYNTR_ROUTER_TRACE") else None


def open_tun(name):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


class Link:
    """One direction of the bottleneck."""

    def __init__(self, name, out_fd, rate_bits, queue_bytes, delay):
        self.name = name
        self.out_fd = out_fd
        self.seconds_per_byte = 8.0 / rate_bits
        self.queue_limit = queue_bytes
        self.delay = delay
        self.queue = []  # packets waiting for the link
        self.queued_bytes = 0
        self.busy_until = 0.0  # when the packet on the wire finishes serialising
        self.in_flight = []  # heap of (deliver_at, seq, packet): propagating
        self.seq = 0
        self.stats = {"packets": 0, "bytes": 0, "drops": 0, "dropped_bytes": 0, "peak_queue": 0}

    def set_rate(self, rate_bits):
        self.seconds_per_byte = 8.0 / rate_bits

    def arrive(self, packet, now):
        if TRACE is not None:
            TRACE.append((now, self.name, packet[:40], self.queued_bytes))
        if self.queued_bytes + len(packet) > self.queue_limit:
            self.stats["drops"] += 1
            self.stats["dropped_bytes"] += len(packet)
            return
        self.queue.append((now, packet))
        self.queued_bytes += len(packet)
        self.stats["peak_queue"] = max(self.stats["peak_queue"], self.queued_bytes)
        self.pump(now)

    def pump(self, now):
        # Start serialising queued packets whenever the link is free. Times are virtual: a
        # packet starts when the link freed or when it arrived, whichever is later, not when
        # this process got round to it, so a router descheduled for a moment delivers late but
        # never loses link capacity (it did: busy, it moved only ~18 of its 20 Mbit/s).
        while self.queue and self.busy_until <= now:
            arrived, packet = self.queue.pop(0)
            self.queued_bytes -= len(packet)
            start = max(self.busy_until, arrived)
            self.busy_until = start + len(packet) * self.seconds_per_byte
            self.seq += 1
            heapq.heappush(self.in_flight, (self.busy_until + self.delay, self.seq, packet))
        while self.in_flight and self.in_flight[0][0] <= now:
            _, _, packet = heapq.heappop(self.in_flight)
            try:
                os.write(self.out_fd, packet)
                self.stats["packets"] += 1
                self.stats["bytes"] += len(packet)
            except OSError:  # the device is full, or not up yet
                self.stats["drops"] += 1

    def next_event(self):
        times = []
        if self.queue:
            times.append(self.busy_until)
        if self.in_flight:
            times.append(self.in_flight[0][0])
        return min(times) if times else None


def main():
    tun_client, tun_server, rate_bits, queue_bytes, delay_ms, stats_file = sys.argv[1:7]
    client_fd = open_tun(tun_client)
    server_fd = open_tun(tun_server)
    up_rate, _, down_rate = rate_bits.partition("/")
    up_rate = float(up_rate)
    down_rate = float(down_rate) if down_rate else up_rate
    queue, delay = int(queue_bytes), float(delay_ms) / 1000.0
    uplink = Link("uplink", server_fd, up_rate, queue, delay)
    downlink = Link("downlink", client_fd, down_rate, queue, delay)
    rate_file = stats_file + ".rate"
    rate_seen = None
    # When each change of rate took effect (the last 50, as [monotonic time, up, down]): the
    # phases of a schedule are measured from these, not from when the runner asked.
    rate_steps = []
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    print("ready", flush=True)
    last_stats = 0.0
    last_sample = 0.0
    # Queue occupancy sampled every 10 ms, kept as running sums: writing whole series out
    # would cost the router enough time to disturb what it emulates.
    occupancy = {"samples": 0, "uplink_sum": 0, "downlink_sum": 0}
    # Wake-ups over 20 ms later than the wait asked (the last 200, as [monotonic time, ms late]):
    # a router the host leaves descheduled holds every packet that long (probe round trips that
    # rise by the stall and fall by 10 ms per probe), which is the host's delay, not the link's.
    stalls = []
    while running[0]:
        now = time.monotonic()
        events = [t for t in (uplink.next_event(), downlink.next_event()) if t is not None]
        wait = min(max(0.0, min(events) - now) if events else 0.1, 0.1)
        try:
            readable, _, _ = select.select([client_fd, server_fd], [], [], wait)
        except InterruptedError:
            continue
        woke = time.monotonic()
        late_ms = (woke - now - wait) * 1000.0
        if late_ms > 20.0:
            stalls.append([woke, late_ms])
            del stalls[:-200]
        now = woke
        for fd, link in ((client_fd, uplink), (server_fd, downlink)):
            if fd in readable:
                for _ in range(64):
                    try:
                        packet = os.read(fd, 65536)
                    except BlockingIOError:
                        break
                    link.arrive(packet, now)
        uplink.pump(now)
        downlink.pump(now)
        if now - last_sample >= 0.01:
            last_sample = now
            occupancy["samples"] += 1
            occupancy["uplink_sum"] += uplink.queued_bytes
            occupancy["downlink_sum"] += downlink.queued_bytes
        if now - last_stats >= 0.1:
            last_stats = now
            try:
                with open(rate_file) as control:
                    wanted = control.read().split()
                if wanted != rate_seen and len(wanted) == 2:
                    rate_seen = wanted
                    uplink.set_rate(float(wanted[0]))
                    downlink.set_rate(float(wanted[1]))
                    rate_steps.append([now, float(wanted[0]), float(wanted[1])])
                    del rate_steps[:-50]
            except (FileNotFoundError, ValueError):
                pass
            uplink.stats["queued"] = uplink.queued_bytes
            downlink.stats["queued"] = downlink.queued_bytes
            with open(stats_file + ".tmp", "w") as out:
                json.dump({"uplink": uplink.stats, "downlink": downlink.stats,
                           "occupancy": occupancy, "stalls": stalls, "steps": rate_steps}, out)
            os.replace(stats_file + ".tmp", stats_file)
    if TRACE is not None:
        import pickle
        with open(os.environ["FYNTR_ROUTER_TRACE"], "wb") as out:
            pickle.dump(TRACE, out)


if __name__ == "__main__":
    main()
