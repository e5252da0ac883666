#!/usr/bin/env python3
"""The burst-smoothing testbed: does fyntr keep a small router's queue short?

    sudo python3 ci/testbed/run.py [--quick] [--realtime] [--scenario S] [--modes M,...]
                                   [--fyntr BINARY] [--out DIR]

Two network namespaces (client, server) are joined by an emulated home router (router.py:
20 Mbit/s each way, 32 KiB drop-tail queue, 10 ms each way). In the client namespace a
Terraform-like burst (200 short tunnels, 30 at a time, 128 KiB up and 256 KiB down each, plus 2
bulk uploads of 8 MiB that start with it; the burst ends when all have arrived) runs while a probe sends a UDP ping every 10 ms straight to the server (a video
call or ssh beside the burst). Modes: direct connections, fyntr with defaults (rates auto),
fyntr unpaced (--upload-rate/--download-rate off), and fyntr paced at 95 % of the link
(--upload-rate/--download-rate 19mbit). Reported per mode: probe RTT p50/p99 and
loss, idle and during the burst; router drops; burst completion; per-tunnel completion p99;
Jain's fairness of per-tunnel throughput; goodput per direction during the burst against the
link rate; when the bulk uploads finished; how many times `auto` set a rate; and a chart of
probe RTT over time (testbed.svg). A load still running 3 s before its timeout leaves
sockets-MODE-stuck.txt: `ss -tinom` of both namespaces, to tell a stall in the proxy (data
queued at its sockets) from one in the network (a sender in retransmission backoff).

Scenarios (--scenario): burst (the above, the default); asymmetric (a smaller burst on a 5 up /
40 down line); steps (2 uploads and 2 downloads for 60 s while the line steps 20 -> 5 -> 20
Mbit/s each way; per phase: probe p99 inflation and loss, utilisation each way, the time to
drain the queues after the step down and to carry 90 % of the new rate after the step up);
competing (the burst beside one download that does not go through the proxy; the burst's share
of the downlink); unshaped (the burst over a veth pair with no router: a fast link, where `auto`
should never pace); repeat (the burst run twice through one fyntr, 5 s apart, the second one
measured: a plan run again, when `auto` has already found the line); repeat-asymmetric (the
same on the 5 up / 40 down line); repeat-competing (the same beside the competing download).

Root only (namespaces, TUN); without root it prints why and exits 0. Traffic stays inside the
namespaces (198.18.0.0/15, the benchmarking range); everything is removed at the end.
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
RATE_BITS = 20_000_000
QUEUE_BYTES = 32 * 1024
DELAY_MS = 10
CLIENT_ADDR, SERVER_ADDR = "198.18.1.2", "198.18.2.2"
# A second path between the namespaces, a veth pair with no router: the fast unshaped link.
FAST_CLIENT_ADDR, FAST_SERVER_ADDR = "198.18.3.2", "198.18.4.2"
BURST_PORT, SINK_PORT, PROBE_PORT = 8443, 8444, 8445
PROXY = "127.0.0.1:9999"


def sh(*args, check=True):
    return subprocess.run(args, check=check, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


class Testbed:
    def __init__(self, out, realtime_priority, fyntr_binary, rate_spec):
        self.out = out
        self.rate_spec = rate_spec
        self.fyntr_binary = fyntr_binary
        self.realtime_priority = realtime_priority
        suffix = str(os.getpid())
        self.client_ns, self.server_ns = f"fyntr-c{suffix}", f"fyntr-s{suffix}"
        self.tun_client, self.tun_server = f"fyc{suffix}"[:15], f"fys{suffix}"[:15]
        self.stats_file = f"/tmp/fyntr-router-{suffix}.json"
        self.processes = []

    def __enter__(self):
        try:
            return self.set_up()
        except BaseException:
            self.__exit__()
            raise

    def set_up(self):
        for ns in (self.client_ns, self.server_ns):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        # With --realtime the router runs at real-time priority: on a small machine shared with
        # the burst's clients, servers and the proxy, a router descheduled for a few milliseconds
        # leaves the link idle and then sees queued packets arrive at once.
        realtime = ["chrt", "-f", "50"] if self.realtime_priority and shutil.which("chrt") else []
        router = subprocess.Popen(
            [*realtime, sys.executable, os.path.join(HERE, "router.py"), self.tun_client, self.tun_server,
             self.rate_spec, str(QUEUE_BYTES), str(DELAY_MS), self.stats_file],
            stdout=subprocess.PIPE, text=True)
        self.processes.append(router)
        assert router.stdout.readline().strip() == "ready", "router did not start"
        for tun, ns, addr, peer in ((self.tun_client, self.client_ns, CLIENT_ADDR, "198.18.2.0/24"),
                                    (self.tun_server, self.server_ns, SERVER_ADDR, "198.18.1.0/24")):
            sh("ip", "link", "set", tun, "netns", ns)
            sh("ip", "-n", ns, "addr", "add", f"{addr}/32", "dev", tun)
            sh("ip", "-n", ns, "link", "set", tun, "mtu", "1500", "up")
            sh("ip", "-n", ns, "route", "add", peer, "dev", tun)
        veth_client, veth_server = f"fvc{os.getpid()}"[:15], f"fvs{os.getpid()}"[:15]
        sh("ip", "link", "add", veth_client, "netns", self.client_ns, "type", "veth", "peer", "name",
           veth_server, "netns", self.server_ns)
        for dev, ns, addr, peer in ((veth_client, self.client_ns, FAST_CLIENT_ADDR, "198.18.4.0/24"),
                                    (veth_server, self.server_ns, FAST_SERVER_ADDR, "198.18.3.0/24")):
            sh("ip", "-n", ns, "addr", "add", f"{addr}/32", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "route", "add", peer, "dev", dev)
        server = subprocess.Popen(
            ["ip", "netns", "exec", self.server_ns, sys.executable, os.path.join(HERE, "server.py"),
             "0.0.0.0", str(BURST_PORT), str(SINK_PORT)],
            stdout=subprocess.PIPE, text=True)
        self.processes.append(server)
        assert server.stdout.readline().strip() == "ready", "server did not start"
        self.realtime = realtime
        echo = subprocess.Popen(
            ["ip", "netns", "exec", self.server_ns, *realtime, sys.executable,
             os.path.join(HERE, "probe.py"), "echo", "0.0.0.0", str(PROBE_PORT)],
            stdout=subprocess.PIPE, text=True)
        self.processes.append(echo)
        assert echo.stdout.readline().strip() == "ready", "probe echo did not start"
        return self

    def __exit__(self, *_):
        for process in reversed(self.processes):
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
        for ns in (self.client_ns, self.server_ns):
            sh("ip", "netns", "pids", ns, check=False)
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass
            sh("ip", "netns", "del", ns, check=False)
        for path in (self.stats_file, self.stats_file + ".rate"):
            if os.path.exists(path):
                os.remove(path)

    def router_stats(self):
        with open(self.stats_file) as stats:
            return json.load(stats)

    def open_connections(self):
        """TCP connections still alive in either namespace (closed sockets drain their send
        queues for a while, with retransmission back-off pauses of seconds)."""
        count = 0
        for ns in (self.client_ns, self.server_ns):
            lines = sh("ip", "netns", "exec", ns, "ss", "-Htan", check=False).stdout.splitlines()
            count += sum(1 for line in lines if line.split()[0] not in ("LISTEN", "TIME-WAIT"))
        return count

    def wait_quiet(self, limit=90.0):
        """Waits until no connection of a previous mode is left and nothing crosses the router
        for a second, so that its leftovers do not leak into this mode's measurements."""
        deadline = time.monotonic() + limit
        last = None
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            stats = self.router_stats()
            counters = (stats["uplink"]["bytes"], stats["downlink"]["bytes"])
            if counters != last:
                last, quiet_since = counters, time.monotonic()
            elif time.monotonic() - quiet_since >= 1.0 and self.open_connections() == 0:
                return
            time.sleep(0.2)
        print("testbed: the link never went quiet; measuring anyway", file=sys.stderr)

    def record_sockets(self, path):
        """Writes `ss -tinom` of the TCP connections in both namespaces to `path`."""
        with open(path, "w") as out:
            for ns in (self.client_ns, self.server_ns):
                try:
                    listing = subprocess.run(["ip", "netns", "exec", ns, "ss", "-tinom"],
                                             capture_output=True, text=True, timeout=10,
                                             check=False)
                    out.write(f"# {ns}\n{listing.stdout}{listing.stderr}\n")
                except subprocess.TimeoutExpired:
                    # A diagnostic must not end the run it describes.
                    out.write(f"# {ns}\nss did not answer within 10 s\n")

    def set_rates(self, up_bits, down_bits):
        with open(self.stats_file + ".rate.tmp", "w") as out:
            out.write(f"{up_bits} {down_bits}")
        os.replace(self.stats_file + ".rate.tmp", self.stats_file + ".rate")

    def run_mode(self, name, fyntr_args, config):
        phases = config.get("phases", [])
        if phases:
            self.set_rates(phases[0]["up"], phases[0]["down"])
        self.wait_quiet()
        fyntr = None
        if fyntr_args is not None:
            log_path = os.path.join(self.out, f"fyntr-{name}.log")
            log = open(log_path, "w")
            # Rate changes of `auto` are logged at debug: the scenarios count them.
            env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info,fyntr::auto_pacing=debug"))
            fyntr = subprocess.Popen(
                ["ip", "netns", "exec", self.client_ns, self.fyntr_binary,
                 "--allow-port", f"{BURST_PORT},{SINK_PORT}", *fyntr_args],
                stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
            deadline = time.monotonic() + 10
            while "listening on" not in open(log_path).read():
                assert time.monotonic() < deadline and fyntr.poll() is None, open(log_path).read()
                time.sleep(0.05)
        if fyntr is not None and config.get("warm_up"):
            # The same burst once before the measured one, through the same proxy, unmeasured.
            warm = dict(config, proxy=PROXY, idle_seconds=0.0)
            subprocess.run(
                ["ip", "netns", "exec", self.client_ns, sys.executable,
                 os.path.join(HERE, "client.py"), json.dumps(warm)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                timeout=config["timeout_seconds"] + 30, check=False)
            # Its last bytes must not count as the measured burst's idle round trips.
            self.wait_quiet()
        time.sleep(0.5)
        mode_started = time.monotonic()
        before = self.router_stats()
        config = dict(config, proxy=None if fyntr is None else PROXY)
        probe = subprocess.Popen(
            ["ip", "netns", "exec", self.client_ns, *self.realtime, sys.executable,
             os.path.join(HERE, "probe.py"), "send", SERVER_ADDR, str(PROBE_PORT),
             str(config["probe_interval"])],
            stdout=subprocess.PIPE, text=True)
        assert probe.stdout.readline().strip() == "ready", "probe did not start"
        client = subprocess.Popen(
            ["ip", "netns", "exec", self.client_ns, sys.executable,
             os.path.join(HERE, "client.py"), json.dumps(config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # While the client runs: the router's counters every 100 ms, and the rate schedule
        # (phase times count from the end of the idle period, when the load starts).
        load_starts = time.monotonic() + config["idle_seconds"]
        series = []
        pending = list(phases[1:])
        # A load still running a few seconds before its timeout has tunnels that may never
        # finish: what both ends' sockets say then (queues, windows, retransmission backoff)
        # is what tells a stall in the proxy from one in the network.
        stuck_at = load_starts + config["timeout_seconds"] - 3
        stuck_recorded = False
        while client.poll() is None:
            now = time.monotonic()
            if not stuck_recorded and now >= stuck_at:
                self.record_sockets(os.path.join(self.out, f"sockets-{name}-stuck.txt"))
                stuck_recorded = True
            while pending and now >= load_starts + pending[0]["at"]:
                self.set_rates(pending[0]["up"], pending[0]["down"])
                pending.pop(0)
            try:
                stats = self.router_stats()
                series.append([now, stats["uplink"]["bytes"], stats["downlink"]["bytes"],
                               stats["uplink"].get("queued", 0), stats["downlink"].get("queued", 0)])
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        client_out, client_err = client.communicate()
        client = subprocess.CompletedProcess(client.args, client.returncode, client_out, client_err)
        if phases:
            self.set_rates(phases[0]["up"], phases[0]["down"])
        probe.send_signal(signal.SIGTERM)
        samples = json.loads(probe.stdout.readline())
        probe.wait(timeout=10)
        after = self.router_stats()
        if fyntr is not None:
            fyntr.send_signal(signal.SIGTERM)
            fyntr.wait(timeout=15)
        if client.stderr.strip():
            print(f"{name}: {client.stderr.strip()[:500]}", file=sys.stderr)
        result = json.loads(client.stdout)
        result["expected_tunnels"] = config["tunnels"]
        result["config_bulk_uploads"] = config["bulk_uploads"]
        result["config_up_bytes"] = config["up_bytes"]
        result["config_down_bytes"] = config["down_bytes"]
        origin = result["idle_began"]
        result["idle_samples"] = [{"t": at - origin, "rtt_ms": rtt} for at, rtt in samples
                                  if result["idle_began"] <= at < result["idle_ended"]]
        result["burst_samples"] = [{"t": at - origin, "rtt_ms": rtt} for at, rtt in samples
                                   if result["burst_began"] <= at]
        result["series"] = [[at - origin, *rest] for at, *rest in series]
        for flow in result.get("flows", []):
            flow["start"] += result["burst_began"] - origin
            flow["end"] += result["burst_began"] - origin
        result["phases"] = phases
        result["up_bits"], result["down_bits"] = config["up_bits"], config["down_bits"]
        result["auto_paced_changes"] = 0
        if fyntr is not None:
            log_text = open(log_path).read()
            result["auto_paced_changes"] = log_text.count('auto rate changed direction="upload" mode="paced"') \
                + log_text.count('auto rate changed direction="download" mode="paced"')
        # When the router changed rate during the load: the runner asks on its own clock, which
        # starts before the client's (its start-up), and the router acts within 0.1 s; counted
        # from the schedule, a phase held up to 0.13 s of the next one's rate.
        result["steps_at"] = [at - origin for at, *_ in after.get("steps", [])
                              if result["burst_began"] < at <= result["burst_ended"]]
        result["burst_ended"] -= origin
        result["burst_began"] -= origin
        result["drops"] = sum(after[d]["drops"] - before[d]["drops"] for d in ("uplink", "downlink"))
        result["uplink_drops"] = after["uplink"]["drops"] - before["uplink"]["drops"]
        elapsed = time.monotonic() - mode_started
        for direction in ("uplink", "downlink"):
            sent = after[direction]["bytes"] - before[direction]["bytes"]
            result[f"{direction}_mbit"] = sent * 8 / elapsed / 1e6
        samples = after["occupancy"]["samples"] - before["occupancy"]["samples"]
        for direction in ("uplink", "downlink"):
            total = after["occupancy"][f"{direction}_sum"] - before["occupancy"][f"{direction}_sum"]
            result[f"{direction}_queue_mean"] = total / samples if samples else 0
        result["downlink_drops"] = after["downlink"]["drops"] - before["downlink"]["drops"]
        result["peak_queue"] = max(after[d]["peak_queue"] for d in ("uplink", "downlink"))
        # Over the whole run, idle period included: a stall there distorts the baseline.
        stalls = [ms for at, ms in after.get("stalls", []) if at >= mode_started]
        result["router_stalls"] = len(stalls)
        result["router_worst_stall_ms"] = max(stalls, default=0.0)
        if stalls:
            print(f"{name}: the router woke up over 20 ms late {len(stalls)} time(s), up to "
                  f"{max(stalls):.0f} ms: the host, not the link, held packets then, so this "
                  "run's delays and losses are not all the link's", file=sys.stderr)
        delayed = delayed_by_host(result)
        result["probes_delayed_by_host"] = len(delayed)
        if delayed:
            print(f"{name}: {len(delayed)} probe round trip(s) longer than any queue of the "
                  f"emulated link allows (up to {max(delayed):.0f} ms, from "
                  f"{min(delayed):.0f} ms): a probe end or the router was descheduled, so this "
                  "run's probe figures are not all the link's", file=sys.stderr)
        return result


def delayed_by_host(result):
    """The probe round trips (ms) over what the emulated link could cause: the least idle round
    trip plus both router queues full at the slowest rates of the run, and 5 ms for the packets
    in service. Longer ones were held by the host (a probe end or the router descheduled: the
    round trips of the probes after it fall by their 10 ms spacing each), not by the link."""
    samples = result["idle_samples"] + result["burst_samples"]
    rtts = [s["rtt_ms"] for s in samples if s["rtt_ms"] is not None]
    idle = [s["rtt_ms"] for s in result["idle_samples"] if s["rtt_ms"] is not None]
    if not idle:
        return []
    rates = [(p["up"], p["down"]) for p in result["phases"]] or [(result["up_bits"], result["down_bits"])]
    queues_ms = sum(QUEUE_BYTES * 8 / min(rate[way] for rate in rates) * 1000 for way in (0, 1))
    bound = min(idle) + queues_ms + 5.0
    return [rtt for rtt in rtts if rtt > bound]


def percentile(values, fraction):
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(len(values) * fraction))]


def median_of(values):
    """The median of the figures that are numbers (a run may have none: NaN)."""
    numbers = [value for value in values if value == value]
    return statistics.median(numbers) if numbers else float("nan")


def summarize(result):
    idle = [s["rtt_ms"] for s in result["idle_samples"] if s["rtt_ms"] is not None]
    burst = [s for s in result["burst_samples"] if s["t"] <= result["burst_ended"]]
    burst_rtts = [s["rtt_ms"] for s in burst if s["rtt_ms"] is not None]
    tunnels = result["tunnels"]
    ok = [t for t in tunnels if t["ok"]]
    durations = [t["end"] - t["start"] for t in ok]
    median_duration = percentile(durations, 0.5)
    rates = [t["bytes"] / (t["end"] - t["start"]) for t in ok if t["end"] > t["start"]]
    jain = sum(rates) ** 2 / (len(rates) * sum(r * r for r in rates)) if rates else 0.0
    # The p99 target read the other way: the share of the burst's probes more than 12 ms over
    # the idle p99 (or lost), which must stay at 1 % or under, and of it the part in the burst's
    # first 4 s, before `auto` has found both directions' rates (see docs/testbed.md).
    idle_p99 = percentile(idle, 0.99)
    over = [s for s in burst if s["rtt_ms"] is None or s["rtt_ms"] - idle_p99 > 12]
    first = [s for s in over if s["t"] - result["burst_began"] < 4]
    summary = {
        "probe_idle_p50_ms": percentile(idle, 0.5),
        "probe_idle_p99_ms": idle_p99,
        "probe_burst_p50_ms": percentile(burst_rtts, 0.5),
        "probe_burst_p99_ms": percentile(burst_rtts, 0.99),
        "probe_p99_inflation_ms": percentile(burst_rtts, 0.99) - idle_p99,
        "probe_loss_pct": 100.0 * (len(burst) - len(burst_rtts)) / max(1, len(burst)),
        "probes_over_12ms_pct": 100.0 * len(over) / max(1, len(burst)),
        "probes_over_12ms_first_4s_pct": 100.0 * len(first) / max(1, len(burst)),
        "router_drops": result["drops"],
        "uplink_mbit_per_s": result["uplink_mbit"],
        "downlink_mbit_per_s": result["downlink_mbit"],
        "uplink_queue_mean_bytes": result["uplink_queue_mean"],
        "downlink_queue_mean_bytes": result["downlink_queue_mean"],
        "uplink_drops": result["uplink_drops"],
        "downlink_drops": result["downlink_drops"],
        "router_peak_queue_bytes": result["peak_queue"],
        # The host's scheduling of the router: a run with stalls measures the host, not the link.
        "router_stalls": result["router_stalls"],
        "router_worst_stall_ms": result["router_worst_stall_ms"],
        "probes_delayed_by_host": result["probes_delayed_by_host"],
        "burst_completion_s": result["burst_ended"] - result["burst_began"],
        "tunnel_completion_p99_s": percentile(durations, 0.99),
        "tunnel_completion_max_s": max(durations, default=float("nan")),
        # Tunnels that took over five times the median: a sender left crawling (a tail that
        # alone may set the burst's completion, and beside a competing download its share).
        "tunnels_over_5x_median": sum(1 for d in durations if d > 5 * median_duration),
        # Tunnels still running when the burst timed out never reported: they failed too.
        "failed_tunnels": result["expected_tunnels"] - len(ok),
        "jain": jain,
        "failed_bulk_uploads": result["config_bulk_uploads"] - sum(1 for b in result["bulk"] if b["ok"]),
        "bulk_upload_finished_s": max((b["end"] for b in result["bulk"]), default=float("nan")),
        # Goodput: payload bytes the burst delivered each way over the burst's duration, as a
        # share of the link's rate (what an outside tool sees: bytes delivered, not offered).
        "uplink_goodput_of_rate": burst_goodput(result, "up") / result["up_bits"],
        "downlink_goodput_of_rate": burst_goodput(result, "down") / result["down_bits"],
        # How many times `auto` set a rate (0: it never paced).
        "auto_paced_changes": result["auto_paced_changes"],
    }
    beside = [f for f in result.get("flows", []) if not f["proxied"]]
    if beside:
        # A download beside the burst that does not go through the proxy: the burst's share of
        # the downlink while both ran.
        ours = result["config_down_bytes"] * len(ok)
        theirs = sum(f["bytes"] for f in beside)
        summary["burst_share_of_downlink"] = ours / max(1, ours + theirs)
    summary.update(phase_metrics(result, percentile(idle, 0.99)))
    return summary


def phase_metrics(result, idle_p99):
    """Per phase of a rate schedule: probe p99 inflation and loss, utilisation of each direction,
    the time to drain the queues after a step down (under 5 ms each way, once they filled), and
    the time to carry 90 % of the new rate each way after a step up (over one second)."""
    phases = result["phases"]
    if len(phases) < 2:
        return {}
    series = result["series"]
    began, ended = result["burst_began"], result["burst_ended"]
    # Each phase from the step the router made (see run_mode), or from the schedule if the
    # router's steps were not all seen.
    steps = result.get("steps_at", [])
    if len(steps) != len(phases) - 1:
        steps = [began + phase["at"] for phase in phases[1:]]
    starts = [began, *steps]
    metrics = {}
    for i, phase in enumerate(phases):
        start = starts[i]
        end = starts[i + 1] if i + 1 < len(phases) else ended
        name = f"phase{i}_{phase['up'] / 1e6:g}/{phase['down'] / 1e6:g}"
        samples = [s for s in result["burst_samples"] if start <= s["t"] < end]
        rtts = [s["rtt_ms"] for s in samples if s["rtt_ms"] is not None]
        metrics[f"{name}_p99_inflation_ms"] = percentile(rtts, 0.99) - idle_p99
        metrics[f"{name}_probe_loss_pct"] = 100.0 * (len(samples) - len(rtts)) / max(1, len(samples))
        inside = [row for row in series if start <= row[0] <= end]
        if len(inside) >= 2:
            seconds = inside[-1][0] - inside[0][0]
            for column, direction, bits in ((1, "uplink", phase["up"]), (2, "downlink", phase["down"])):
                moved = inside[-1][column] - inside[0][column]
                metrics[f"{name}_{direction}_utilisation"] = moved * 8 / (bits * seconds)
        if i == 0:
            continue
        before = phases[i - 1]
        if phase["up"] < before["up"] or phase["down"] < before["down"]:
            # From the first sample after the step where a queue holds over 10 ms of the new
            # rate (before that the queues may not have filled yet): the first where both hold
            # under 5 ms. No queue over 10 ms at all is a drain time of 0.
            def seconds_queued(row):
                return max(row[3] * 8 / phase["up"], row[4] * 8 / phase["down"])
            filled = next((j for j, row in enumerate(inside) if seconds_queued(row) > 0.010), None)
            if filled is None:
                drained = 0.0
            else:
                drained = next((row[0] - start for row in inside[filled:]
                                if seconds_queued(row) <= 0.005), float("nan"))
            metrics[f"{name}_drain_s"] = drained
        if phase["up"] > before["up"] or phase["down"] > before["down"]:
            ramped = float("nan")
            for j, row in enumerate(inside):
                back = next((old for old in reversed(inside[:j]) if old[0] <= row[0] - 1.0), None)
                if back is None:
                    continue
                seconds = row[0] - back[0]
                if ((row[1] - back[1]) * 8 / seconds >= 0.9 * phase["up"]
                        and (row[2] - back[2]) * 8 / seconds >= 0.9 * phase["down"]):
                    ramped = row[0] - start
                    break
            metrics[f"{name}_ramp_s"] = ramped
    return metrics


def burst_goodput(result, direction):
    """Bits per second of payload the burst moved one way while it ran."""
    duration = result["burst_ended"] - result["burst_began"]
    if duration <= 0:
        return 0.0
    ok = [t for t in result["tunnels"] if t["ok"]]
    per_tunnel = result["config_up_bytes"] if direction == "up" else result["config_down_bytes"]
    total = per_tunnel * len(ok)
    if direction == "up":
        total += sum(b["bytes"] for b in result["bulk"] if b["ok"])
    return total * 8 / duration


def svg_chart(results, path, title):
    colours = {"direct": "#d95f02", "fyntr": "#7570b3", "fyntr-paced-95": "#1b9e77",
               "fyntr-tokio": "#e7298a", "fyntr-paced-85": "#66a61e", "fyntr-paced-95-connect-10": "#e6ab02"}
    width, height, left, top = 900, 420, 60, 40
    t_max = max(max((s["t"] for s in r["burst_samples"]), default=1) for r in results.values())
    rtt_max = max(max((s["rtt_ms"] or 0 for s in r["idle_samples"] + r["burst_samples"]), default=1)
                  for r in results.values())
    rtt_max = max(rtt_max, 30)
    x = lambda t: left + (width - left - 20) * t / t_max
    y = lambda v: top + (height - top - 40) * (1 - v / rtt_max)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11"><rect width="100%" height="100%" fill="white"/>',
             f'<text x="{left}" y="20" font-size="14">Probe RTT over time (idle, then load): {title}</text>']
    for tick in range(0, int(rtt_max) + 1, max(5, int(rtt_max / 8) // 5 * 5 or 5)):
        parts.append(f'<line x1="{left}" y1="{y(tick):.1f}" x2="{width - 20}" y2="{y(tick):.1f}" stroke="#eee"/>'
                     f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">{tick} ms</text>')
    for i, (mode, result) in enumerate(results.items()):
        samples = sorted(result["idle_samples"] + result["burst_samples"], key=lambda s: s["t"])
        points = " ".join(f"{x(s['t']):.1f},{y(s['rtt_ms']):.1f}" for s in samples if s["rtt_ms"] is not None)
        colour = colours.get(mode, "#666")
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1" points="{points}"/>')
        losses = [s for s in samples if s["rtt_ms"] is None]
        for s in losses:
            parts.append(f'<circle cx="{x(s["t"]):.1f}" cy="{top}" r="2" fill="{colour}"/>')
        parts.append(f'<rect x="{left + 10 + 170 * i}" y="{height - 22}" width="12" height="12" fill="{colour}"/>'
                     f'<text x="{left + 28 + 170 * i}" y="{height - 12}">{mode}</text>')
    parts.append(f'<text x="{width - 20}" y="{height - 28}" text-anchor="end">time (s); dots on top: lost probes</text>')
    parts.append("</svg>")
    with open(path, "w") as out:
        out.write("\n".join(parts))


def steps(quick):
    seconds = 30 if quick else 60
    return {"tunnels": 0, "bulk_uploads": 0, "timeout_seconds": seconds + 30,
            "continuous": {"up": 2, "down": 2, "seconds": seconds},
            "phases": [{"at": 0, "up": 20_000_000, "down": 20_000_000},
                       {"at": seconds / 3, "up": 5_000_000, "down": 5_000_000},
                       {"at": 2 * seconds / 3, "up": 20_000_000, "down": 20_000_000}]}


# Each scenario's changes to the burst's configuration.
SCENARIOS = {
    "burst": lambda quick: {},
    "asymmetric": lambda quick: {"up_bits": 5_000_000, "down_bits": 40_000_000,
                                 "tunnels": 40 if quick else 100, "bulk_uploads": 1,
                                 "bulk_upload_bytes": 2 * 1024 * 1024},
    "steps": steps,
    "competing": lambda quick: {"direct_downloads": 1},
    "unshaped": lambda quick: {"server": FAST_SERVER_ADDR},
    "repeat": lambda quick: {"warm_up": True},
    "repeat-asymmetric": lambda quick: dict(SCENARIOS["asymmetric"](quick), warm_up=True),
    "repeat-competing": lambda quick: dict(SCENARIOS["competing"](quick), warm_up=True),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smaller burst (smoke test)")
    parser.add_argument("--realtime", action="store_true",
                        help="run the router and the probe at real-time priority (experimental)")
    parser.add_argument("--out", default=os.path.join(ROOT, "target", "testbed"))
    parser.add_argument("--fyntr", default=os.path.join(ROOT, "target/release/fyntr"),
                        help="the fyntr binary to run (default: the release build)")
    parser.add_argument("--scenario", default="burst", choices=sorted(SCENARIOS),
                        help="burst (default): the burst on a 20/20 line; asymmetric: a smaller "
                             "burst on a 5 up / 40 down line; steps: 2 uploads and 2 downloads for "
                             "60 s while the line steps 20 -> 5 -> 20 Mbit/s each way; competing: the "
                             "burst beside a download that does not go through the proxy; unshaped: "
                             "the burst over a veth pair with no router; repeat, repeat-asymmetric, "
                             "repeat-competing: the burst (on the 20/20 or the 5/40 line, or beside "
                             "the competing download) twice through one fyntr, the second one "
                             "measured")
    parser.add_argument("--runs", type=int, default=1,
                        help="run the modes N times in turn (direct, fyntr, ..., direct, fyntr, ...) "
                             "and report each metric's median and range: the probe figures of one "
                             "run of the same build vary by a few points")
    parser.add_argument("--modes", default="", help="comma-separated subset of: direct, fyntr, fyntr-unpaced, fyntr-tokio, fyntr-paced-95, fyntr-paced-85, fyntr-paced-95-connect-10")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("testbed skipped: it needs root (network namespaces and TUN devices)")
        return 0
    for tool in ("ip",):
        if shutil.which(tool) is None:
            print(f"testbed skipped: {tool} (iproute2) is not installed")
            return 0
    if not os.path.exists(args.fyntr):
        subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    config = {
        "server": SERVER_ADDR, "burst_port": BURST_PORT, "sink_port": SINK_PORT, "probe_port": PROBE_PORT,
        "tunnels": 40 if args.quick else 200, "parallel": 30, "up_bytes": 128 * 1024,
        "down_bytes": 256 * 1024, "bulk_uploads": 2,
        "bulk_upload_bytes": (2 if args.quick else 8) * 1024 * 1024, "idle_seconds": 1.0 if args.quick else 5.0,
        "probe_interval": 0.01, "timeout_seconds": 120,
        "up_bits": RATE_BITS, "down_bits": RATE_BITS,
    }
    config.update(SCENARIOS[args.scenario](args.quick))
    rate_spec = f"{config['up_bits']}/{config['down_bits']}"
    modes = {
        "direct": None,
        "fyntr": ["--backend", "auto"],
        "fyntr-unpaced": ["--backend", "auto", "--upload-rate", "off", "--download-rate", "off"],
        "fyntr-tokio": ["--backend", "tokio"],
        "fyntr-paced-95": ["--backend", "auto", "--upload-rate", "19mbit", "--download-rate", "19mbit"],
        "fyntr-paced-85": ["--backend", "auto", "--upload-rate", "17mbit", "--download-rate", "17mbit"],
        "fyntr-paced-95-connect-10": ["--backend", "auto", "--upload-rate", "19mbit", "--download-rate", "19mbit",
                                      "--connect-rate", "10"],
    }
    wanted = [m for m in args.modes.split(",") if m] or ["direct", "fyntr", "fyntr-paced-95"]
    modes = {name: modes[name] for name in wanted}
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    runs = []
    os.makedirs(args.out, exist_ok=True)
    # A SIGTERM (say, from `timeout`) unwinds like Ctrl-C, so the namespaces and processes below
    # are removed instead of left behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with Testbed(args.out, args.realtime, args.fyntr, rate_spec) as bed:
        for run in range(args.runs):
            results = {}
            for name, fyntr_args in modes.items():
                which = f" (run {run + 1} of {args.runs})" if args.runs > 1 else ""
                print(f"testbed: running {name}{which}", file=sys.stderr)
                results[name] = bed.run_mode(name, fyntr_args, config)
            runs.append({name: summarize(result) for name, result in results.items()})
    # Medians over the runs (one run's own figures when there is one); the samples and the chart
    # are the last run's.
    summary = {name: {key: median_of([run[name][key] for run in runs]) for key in runs[0][name]}
               for name in runs[0]}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "testbed.json"), "w") as out:
        json.dump({"summary": summary, "runs": runs, "config": config}, out, indent=2)
    with open(os.path.join(args.out, "testbed-samples.json"), "w") as out:
        json.dump({name: {"burst_began": r["burst_began"], "burst_ended": r["burst_ended"],
                          "steps_at": r.get("steps_at", []),
                          "probe": r["idle_samples"] + r["burst_samples"]}
                   for name, r in results.items()}, out)
    svg_chart(results, os.path.join(args.out, "testbed.svg"),
              f"{args.scenario}, {rate_spec} bit/s, 32 KiB drop-tail queue")
    keys = list(next(iter(summary.values())).keys())
    heads = [f"{mode} (median, range of {len(runs)} runs)" if len(runs) > 1 else mode for mode in summary]
    print("| metric | " + " | ".join(heads) + " |")
    print("|---" * (len(summary) + 1) + "|")
    for key in keys:
        cells = []
        for mode in summary:
            cell = f"{summary[mode][key]:.2f}"
            if len(runs) > 1:
                values = [run[mode][key] for run in runs]
                cell += f" ({min(values):.2f}-{max(values):.2f})"
            cells.append(cell)
        print(f"| {key} | " + " | ".join(cells) + " |")
    print(f"wrote {args.out}/testbed.json, testbed-samples.json and testbed.svg")
    return 0


if __name__ == "__main__":
    sys.exit(main())
