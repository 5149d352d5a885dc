#!/usr/bin/env python3
"""Server CPU per chat delivery with and without /metrics scrapes at 10 Hz.

Starts `servercore server --admin` and `servercore client` (a chat room
where every message is broadcast to every session), then measures
alternating windows in one run: plain, scraped (a thread GETs /metrics ten
times a second), plain, scraped, ... The server's CPU comes from
/proc/PID/stat, the deliveries from its own counter. Prints one line per
window and the ratio of the medians. Before the clients start it also
measures the server CPU of one scrape directly (scrapes back to back against
an idle server, minus the idle CPU), which this noise does not blur, and
what ten a second cost against the plain windows' CPU.

    cargo build --release -p servercore-cli
    python3 scripts/scrape-overhead.py [--sessions 1000] [--rate 2] [--windows 6]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

BIN = os.path.join(os.path.dirname(__file__), "..", "target", "release", "servercore")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def deliveries(admin):
    body = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    match = re.search(r"^servercore_game_chat_deliveries_total (\S+)$", body, re.M)
    return float(match.group(1))


def scrape_cost(pid, admin, seconds=3.0):
    """Server CPU seconds per scrape: back-to-back scrapes minus idle."""
    cpu0, t0 = cpu_seconds(pid), time.time()
    time.sleep(seconds)
    idle = (cpu_seconds(pid) - cpu0) / (time.time() - t0)
    cpu0, t0, count = cpu_seconds(pid), time.time(), 0
    while time.time() - t0 < seconds:
        urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read()
        count += 1
    busy = cpu_seconds(pid) - cpu0 - idle * (time.time() - t0)
    return max(busy, 0.0) / count, count


def scraper(admin, stop, counter):
    while not stop.is_set():
        urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read()
        counter[0] += 1
        stop.wait(0.1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=2.0)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--windows", type=int, default=6)
    parser.add_argument("--backend", default="auto")
    args = parser.parse_args()

    server = subprocess.Popen(
        [BIN, "server", "--addr", "127.0.0.1:0", "--db", ":memory:", "--admin", "127.0.0.1:0",
         "--backend", args.backend, "--log", "warn",
         # every dummy client comes from 127.0.0.1
         "--max-conns-per-ip", "0", "--max-new-accounts-per-min", "0"],
        stdout=subprocess.PIPE, text=True)
    addr = server.stdout.readline().split()[4]
    admin = server.stdout.readline().split("http://")[1].split("/")[0]
    per_scrape, count = scrape_cost(server.pid, admin)
    print(f"one scrape: {per_scrape * 1e6:.0f} us server CPU ({count} back to back)")
    total = args.window * (args.windows + 2) + 30
    client = subprocess.Popen(
        [BIN, "client", "--addr", addr, "--sessions", str(args.sessions), "--rate", str(args.rate),
         "--duration", f"{int(total)}s", "--no-progress"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Wait for the chat to flow, then one warm-up window.
        deadline = time.time() + 60
        while deliveries(admin) == 0 and time.time() < deadline:
            time.sleep(0.2)
        time.sleep(args.window)
        results = {"plain": [], "scraped": []}
        plain_cores = []
        for i in range(args.windows):
            mode = "scraped" if i % 2 else "plain"
            stop, counter = threading.Event(), [0]
            thread = None
            if mode == "scraped":
                thread = threading.Thread(target=scraper, args=(admin, stop, counter))
                thread.start()
            cpu0, del0, t0 = cpu_seconds(server.pid), deliveries(admin), time.time()
            time.sleep(args.window)
            cpu1, del1, t1 = cpu_seconds(server.pid), deliveries(admin), time.time()
            stop.set()
            if thread:
                thread.join()
            per = (cpu1 - cpu0) / max(del1 - del0, 1) * 1e9
            results[mode].append(per)
            if mode == "plain":
                plain_cores.append((cpu1 - cpu0) / (t1 - t0))
            print(f"{mode:8} window {i}: {del1 - del0:12,.0f} deliveries, "
                  f"{(cpu1 - cpu0) / (t1 - t0):.2f} cores, {per:7.1f} ns CPU/delivery, "
                  f"{counter[0]} scrapes")
        plain = statistics.median(results["plain"])
        scraped = statistics.median(results["scraped"])
        print(f"median ns CPU/delivery: plain {plain:.1f}, scraped {scraped:.1f}, "
              f"ratio {scraped / plain:.3f}")
        cores = statistics.median(plain_cores)
        print(f"ten scrapes a second from the direct cost: {10 * per_scrape * 1e3:.2f} ms CPU/s, "
              f"{10 * per_scrape / cores * 100:.2f}% of the plain windows' {cores:.2f} cores")
    finally:
        client.terminate()
        client.wait()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    sys.exit(main())
