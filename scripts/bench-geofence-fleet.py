#!/usr/bin/env python3
"""What do 1,000 active geofences cost the load test's fleet? Measured, with the standard library only.

Runs rounds that alternate between arms (``none`` and ``fences`` by default), each run on a fresh release server on
127.0.0.1 (``--max-connections 19700 --max-connections-per-ip 0``, as in BENCHMARKS.md's fleet
command; every other setting at its default, memory only):

- ``none``: no geofence anywhere;
- ``fences``: before the run, ``--fences`` geofences (1,000 by default) are created in *each*
  group the run will use (``{run_id}-g0`` .. ``{run_id}-g{groups-1}``), through
  ``POST /v1/groups/{group}/geofences`` as an admin (``role=admin`` in the query, the server
  running with ``--auth none``, its default on loopback);
- ``far`` (only with ``--arms``): the same fences moved 20 km east, off the grid, so every fix
  is still judged (looked up in the fences' index) but none is near a fence and no event is
  made: what the lookup costs without the events.

The fences lie over the harness's street grid (120 m blocks, 3.6 km from ``--center`` to the
edge, see ``loadtest/src/path.rs``): centres drawn uniformly over the grid plus 100 m, half of
them circles (radius 40-250 m), half star-shaped polygons (6-24 vertices, 50-250 m from their
centre); half with ``debounce_s: 0``, the rest with the default 10 s; one in four with a
``dwell_s`` of 20 s. Each group gets its own layout (seeded by the group number), the same in
every round. With this density most fixes lie inside or near a fence, so fences are really
judged and events made: the ``beacon_geofence_*`` counters are read after each run and printed.

Then ``beacon-loadtest --scenario fleet`` runs with a fixed ``--run-id`` (so its groups are the
ones holding the fences), ``--devices`` devices in groups of 100 at 1 fix/s for ``--duration``,
sampling the server's CPU (``--server-pid``). From each report: p50, p99 and p99.9 of the
end-to-end latency, the server's mean CPU (% of one core, ramp included), the latest-state check's
mismatches, failed connections, connections the server ended and resyncs.

Printed: each run's figures, then per arm the median over rounds and its ratio to ``none``.
The machine may be shared and noisy: compare ratios, not absolutes.

    scripts/bench-geofence-fleet.py [--rounds 3] [--devices 5000] [--duration 30s] [--fences 1000]
                                    [--arms none,fences]

Builds nothing: run ``cargo build --release -p beacon -p beacon-loadtest`` first (the default
binaries are ``target/release/beacon`` and ``target/release/beacon-loadtest``). Stops every
process it starts.
"""

import argparse
import concurrent.futures
import http.client
import json
import math
import os
import random
import statistics
import subprocess
import tempfile
import time
import urllib.request

import benchserver

# The harness's street grid (loadtest/src/path.rs, `Grid::city`).
GRID_HALF_M = 30 * 120.0
# The `far` arm's fences: the same ones moved this far east, where no device ever drives.
FAR_SHIFT_M = 20_000.0
METRES_PER_DEGREE = 111_320.0


def to_lon_lat(center, east_m, north_m):
    lat0, lon0 = center
    lat = lat0 + north_m / METRES_PER_DEGREE
    lon = lon0 + east_m / (METRES_PER_DEGREE * math.cos(math.radians(lat0)))
    return [round(lon, 7), round(lat, 7)]


def fence_bodies(center, group, count, shift_m=0.0):
    """The fences of one group: the same for the same group number, every round; `shift_m`
    moves them all that far east."""
    rng = random.Random(1_000_003 * (group + 1))
    bodies = []
    edge = GRID_HALF_M + 100.0
    for i in range(count):
        east, north = rng.uniform(-edge, edge) + shift_m, rng.uniform(-edge, edge)
        if i % 2 == 0:
            geometry = {"type": "Circle", "center": to_lon_lat(center, east, north),
                        "radius_m": round(rng.uniform(40.0, 250.0), 1)}
        else:
            # Star-shaped around (east, north): one vertex in each of n equal sectors, in order,
            # so no two neighbours are half a turn apart and the ring never crosses itself.
            n = rng.randint(6, 24)
            angles = [2 * math.pi * (k + rng.uniform(0.1, 0.9)) / n for k in range(n)]
            ring = []
            for a in angles:
                r = rng.uniform(50.0, 250.0)
                ring.append(to_lon_lat(center, east + r * math.cos(a), north + r * math.sin(a)))
            ring.append(ring[0])
            geometry = {"type": "Polygon", "coordinates": [ring]}
        body = {"name": f"f{i}", "geometry": geometry}
        if i % 4 < 2:
            body["debounce_s"] = 0
        if i % 4 == 3:
            body["dwell_s"] = 20
        bodies.append(body)
    return bodies


def create_fences(port, groups, args, shift_m):
    """Creates `args.fences` fences in each group, with a few keep-alive connections."""

    def one_group(g):
        group = f"{args.run_id}-g{g}"
        path = f"/v1/groups/{group}/geofences?id=bench-admin&groups={group}&role=admin"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for body in fence_bodies(args.center, g, args.fences, shift_m):
                conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
                answer = conn.getresponse()
                text = answer.read()
                if answer.status != 201:
                    raise RuntimeError(f"fence not created in {group}: {answer.status} {text[:200]!r}")
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one_group, range(groups)))


def metrics(port):
    """The server's `beacon_geofence_*` samples, by their full name (labels included)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("beacon_geofence_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def one_run(args, arm, round_no):
    groups = math.ceil(args.devices / 100)
    server, port, log = benchserver.start(
        args.binary, ["--max-connections", "19700", "--max-connections-per-ip", "0"],
        "bench-geofence-fleet-",
    )
    report = tempfile.NamedTemporaryFile(prefix="bench-geofence-fleet-", suffix=".json", delete=False)
    report.close()
    harness = None
    try:
        setup_s = 0.0
        if arm in ("fences", "far"):
            start = time.perf_counter()
            create_fences(port, groups, args, FAR_SHIFT_M if arm == "far" else 0.0)
            setup_s = time.perf_counter() - start
        before = metrics(port)
        command = [args.harness, "--scenario", "fleet", "--url", f"ws://127.0.0.1:{port}",
                   "--devices", str(args.devices), "--group-size", "100", "--rate", "1",
                   "--ramp", "1000", "--duration", args.duration, "--run-id", args.run_id,
                   "--server-pid", str(server.pid), "--report", report.name, "--quiet"]
        harness = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, err = harness.communicate(timeout=args.max_run_s)
        if harness.returncode not in (0, 1):
            raise RuntimeError(f"harness exited {harness.returncode}: {err.decode()[-500:]}")
        after = metrics(port)
        with open(report.name) as f:
            r = json.load(f)
        if server.poll() is not None:
            raise RuntimeError(f"server exited during the run; see {log.name}")
        events = {k.split('kind="')[1].split('"')[0]: int(v - before.get(k, 0.0))
                  for k, v in after.items() if k.startswith("beacon_geofence_events_total{")}
        judged = int(after.get("beacon_geofence_fixes_judged_total", 0)
                     - before.get("beacon_geofence_fixes_judged_total", 0))
        exact = int(after.get("beacon_geofence_fences_judged_total", 0)
                    - before.get("beacon_geofence_fences_judged_total", 0))
        return {
            "arm": arm, "round": round_no,
            "p50": r["latency_ms"]["p50_ms"], "p99": r["latency_ms"]["p99_ms"],
            "p999": r["latency_ms"]["p999_ms"],
            "server_cpu": r["server"]["cpu_avg_pct"],
            "harness_cpu": r["harness"]["cpu_avg_pct"],
            "fixes_sent": r["traffic"]["fixes_sent"],
            "mismatches": r["latest_state"]["mismatches"] if r["latest_state"]["checked"] else None,
            "failed": r["connections"]["failed"],
            "disconnects": r["connections"]["disconnects"],
            "resyncs": r["traffic"]["resyncs"],
            "load": r["machine"]["load_start"],
            "fences": int(after.get("beacon_geofence_fences", 0)),
            "fixes_judged": judged, "fences_judged": exact,
            "events": sum(events.values()), "events_by_kind": events,
            "setup_s": setup_s,
        }
    finally:
        if harness is not None and harness.poll() is None:
            harness.kill()
            harness.wait()
        benchserver.stop(server, log)
        os.unlink(report.name)


FIGURES = [("p50", "ms"), ("p99", "ms"), ("p999", "ms"), ("server_cpu", "%"), ("harness_cpu", "%")]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds per arm (alternating)")
    parser.add_argument("--devices", type=int, default=5000, help="devices, in groups of 100")
    parser.add_argument("--duration", default="30s", help="steady phase of each run")
    parser.add_argument("--fences", type=int, default=1000, help="fences in each group")
    parser.add_argument("--run-id", default="geofleet", help="the harness's --run-id")
    parser.add_argument("--center", default="52.52,13.405", help="the harness's --center")
    parser.add_argument("--max-run-s", type=float, default=300, help="limit on one harness run")
    parser.add_argument("--arms", default="none,fences",
                        help="arms in the order each round runs them: none, fences, far")
    parser.add_argument("--binary", default="target/release/beacon")
    parser.add_argument("--harness", default="target/release/beacon-loadtest")
    args = parser.parse_args()
    args.center = tuple(float(x) for x in args.center.split(","))
    arms = args.arms.split(",")
    if not arms or any(a not in ("none", "fences", "far") for a in arms):
        parser.error("--arms takes none, fences and far")
    if not 1 <= args.devices <= 20000 or not 1 <= args.fences <= 10000 or not 1 <= args.rounds <= 20:
        parser.error("--devices 1-20000, --fences 1-10000, --rounds 1-20")

    results = []
    for round_no in range(1, args.rounds + 1):
        for arm in arms:
            r = one_run(args, arm, round_no)
            results.append(r)
            print(f"round {round_no} {arm:6}: p50={r['p50']:.1f}ms p99={r['p99']:.1f}ms "
                  f"p99.9={r['p999']:.1f}ms server_cpu={r['server_cpu']:.1f}% "
                  f"harness_cpu={r['harness_cpu']:.1f}% fixes_sent={r['fixes_sent']} "
                  f"mismatches={r['mismatches']} failed={r['failed']} disconnects={r['disconnects']} "
                  f"resyncs={r['resyncs']} load_start={r['load']} "
                  f"fences={r['fences']} fixes_judged={r['fixes_judged']} "
                  f"fences_judged={r['fences_judged']} events={r['events']} "
                  f"{json.dumps(r['events_by_kind'], sort_keys=True)} "
                  f"setup={r['setup_s']:.1f}s", flush=True)

    print()
    base = "none" if "none" in arms else None
    others = [a for a in arms if a != base]
    print("| figure (median over rounds) | " + " | ".join(arms) + " | "
          + " | ".join(f"{a} / none" for a in others if base) + " |")
    print("|---" * (1 + len(arms) + (len(others) if base else 0)) + "|")
    for f, unit in FIGURES:
        m = {arm: statistics.median(r[f] for r in results if r["arm"] == arm) for arm in arms}
        cells = [f"{m[a]:.1f}" for a in arms]
        if base:
            cells += [f"{m[a] / m[base]:.3f}" for a in others]
        print(f"| {f} ({unit}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
