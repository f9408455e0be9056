#!/usr/bin/env python3
"""Does a dead webhook receiver slow ingest or fan-out? Measured, with the standard library only.

Runs rounds that alternate between three arms, each round on a fresh release server on
127.0.0.1 (`--webhook-allow-private`, every other setting at its default):

- ``none``: the group has no webhook endpoint;
- ``live``: the group has one endpoint (``events: ["*"]``) on a receiver (a separate Python
  process) answering 200 at once: the cost of webhooks working;
- ``dead``: the same endpoint on a local socket that accepts connections and never reads or
  answers, so every attempt runs into `--webhook-timeout-ms`, the endpoint's attempt slots stay
  full and its queue fills and overflows: the cost of a dead receiver is dead against live.

In each round a WebSocket viewer of the group connects, then ``--senders`` threads each send
``--requests`` Traccar Client (OsmAnd) reports over one keep-alive connection, every other one
carrying ``alarm=sos`` (an ``alarm`` event, which goes to the viewer at once and to the
webhook); each report is a new fix of one of the thread's devices. Measured per round:

- ingest: the time from sending a report to reading its whole answer (median, p99);
- fan-out lag: the time from sending a report to the viewer receiving it: the ``event`` frame
  for alarms, the first ``batch`` holding the fix for positions (which waits for the group's
  tick, 100 ms by default), median and p99.

Printed: each round's figures, then per arm the median over rounds of each figure, and the
ratios dead / live and live / none. The machine may be shared and noisy: compare ratios, not absolutes.

    scripts/bench-webhooks.py [--rounds 5] [--senders 4] [--requests 600] [--binary PATH]

Builds nothing: run ``cargo build --release`` first (the default binary is
``target/release/beacon``). Stops every process it starts.
"""

import argparse
import base64
import http.client
import json
import os
import socket
import statistics
import struct
import subprocess
import threading
import time
import urllib.request

import benchserver

ADMIN = "id=boss&groups=g&role=admin"


def pct(values, p):
    """The p-th percentile (nearest rank) of values, in ms."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank] * 1000


class DeadReceiver:
    """Accepts connections and never reads or answers them."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.held:
            conn.close()


LIVE_RECEIVER = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""


class LiveReceiver:
    """A receiver in its own process (so it takes no time from the senders) answering 200."""

    def __init__(self):
        self.proc = subprocess.Popen(["python3", "-c", LIVE_RECEIVER], stdout=subprocess.PIPE)
        self.port = int(self.proc.stdout.readline())

    def close(self):
        self.proc.terminate()
        self.proc.wait()


class Viewer:
    """A minimal WebSocket client (JSON codec) noting when each fix and event first arrives."""

    def __init__(self, port, group):
        self.sock = socket.create_connection(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET /v1/ws?id=watcher&groups={group}&role=viewer HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                "Sec-WebSocket-Protocol: beacon.v1.json\r\n\r\n"
            ).encode()
        )
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self.sock.recv(4096)
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(head.decode(errors="replace"))
        self.seen_fix = {}
        self.seen_event = {}
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode, payload):
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def _read(self):
        message = b""
        try:
            while True:
                b0, b1 = self._exact(2)
                length = b1 & 0x7F
                if length == 126:
                    (length,) = struct.unpack(">H", self._exact(2))
                elif length == 127:
                    (length,) = struct.unpack(">Q", self._exact(8))
                payload = self._exact(length)
                opcode = b0 & 0x0F
                if opcode == 0x9:
                    self._send(0xA, payload)
                    continue
                if opcode == 0x8:
                    return
                if opcode in (0x1, 0x0):
                    message += payload
                    if b0 & 0x80:
                        self._note(json.loads(message), time.perf_counter())
                        message = b""
        except (EOFError, OSError):
            return

    def _note(self, frame, now):
        with self.lock:
            if frame.get("type") == "batch":
                for u in frame.get("updates", []):
                    self.seen_fix.setdefault((u["id"], u["ts"]), now)
            elif frame.get("type") == "event":
                for e in frame.get("events", []):
                    self.seen_event.setdefault((e["device"], e["ts"]), now)

    def close(self):
        self.sock.close()


def metric(port, name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def one_round(args, arm, round_no):
    server, port, log = benchserver.start(
        args.binary, ["--webhook-allow-private"], "bench-webhooks-"
    )
    dead = None  # the receiver of the arm, live or dead
    viewer = None
    try:
        if arm != "none":
            dead = DeadReceiver() if arm == "dead" else LiveReceiver()
            body = json.dumps({"url": f"http://127.0.0.1:{dead.port}/hook", "events": ["*"]})
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", f"/v1/groups/g/webhooks?{ADMIN}", body,
                         {"content-type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            if answer.status != 201:
                raise RuntimeError(f"webhook not created: {answer.status}")
            conn.close()
        viewer = Viewer(port, "g")
        time.sleep(0.3)

        sent_fix, sent_event, ingest = {}, {}, []
        base_s = int(time.time()) - 3600

        def sender(t):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            mine = []
            for i in range(args.requests):
                device = f"d{t}-{i % 20}"
                ts_s = base_s + i
                alarm = i % 2 == 0
                path = (f"/v1/ingest/osmand?id={device}&groups=g&lat={48.85 + t * 0.01}"
                        f"&lon={2.35 + (i % 20) * 0.001}&timestamp={ts_s}")
                if alarm:
                    path += "&alarm=sos"
                key = (device, ts_s * 1000)
                start = time.perf_counter()
                sent_fix[key] = start
                if alarm:
                    sent_event[key] = start
                conn.request("POST", path, headers={"content-length": "0"})
                answer = conn.getresponse()
                answer.read()
                mine.append(time.perf_counter() - start)
                if answer.status != 200:
                    raise RuntimeError(f"ingest answered {answer.status}")
            conn.close()
            ingest.extend(mine)

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(args.senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wait_until = time.time() + 5
        while time.time() < wait_until:
            with viewer.lock:
                if (len(viewer.seen_event) >= len(sent_event)
                        and len(viewer.seen_fix) >= len(sent_fix)):
                    break
            time.sleep(0.05)
        with viewer.lock:
            event_lag = [viewer.seen_event[k] - s for k, s in sent_event.items() if k in viewer.seen_event]
            fix_lag = [viewer.seen_fix[k] - s for k, s in sent_fix.items() if k in viewer.seen_fix]
        dropped = metric(port, 'beacon_webhook_deliveries_total{outcome="queue_full"}')
        queued = metric(port, "beacon_webhook_queue_depth")
        delivered = metric(port, 'beacon_webhook_deliveries_total{outcome="delivered"}')
        result = {
            "arm": arm, "round": round_no, "requests": len(ingest),
            "ingest_p50": pct(ingest, 50), "ingest_p99": pct(ingest, 99),
            "event_p50": pct(event_lag, 50), "event_p99": pct(event_lag, 99),
            "events_seen": f"{len(event_lag)}/{len(sent_event)}",
            "fix_p50": pct(fix_lag, 50), "fix_p99": pct(fix_lag, 99),
            "webhook_queued": int(queued), "webhook_dropped": int(dropped),
            "webhook_delivered": int(delivered),
        }
        return result
    finally:
        if viewer:
            viewer.close()
        benchserver.stop(server, log)
        if dead:
            dead.close()


FIGURES = ["ingest_p50", "ingest_p99", "event_p50", "event_p99", "fix_p50", "fix_p99"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per arm (alternating)")
    parser.add_argument("--senders", type=int, default=4, help="sending threads")
    parser.add_argument("--requests", type=int, default=600, help="reports per sender")
    parser.add_argument("--binary", default="target/release/beacon")
    args = parser.parse_args()

    results = []
    for round_no in range(1, args.rounds + 1):
        for arm in ("none", "live", "dead"):
            r = one_round(args, arm, round_no)
            results.append(r)
            print(f"round {round_no} {arm:4}: "
                  + " ".join(f"{f}={r[f]:.2f}ms" for f in FIGURES)
                  + f" events_seen={r['events_seen']} webhook_queued={r['webhook_queued']}"
                  + f" webhook_dropped={r['webhook_dropped']}"
                  + f" webhook_delivered={r['webhook_delivered']}", flush=True)

    print()
    print("| figure (ms, median over rounds) | none | live | dead | dead / live | live / none |")
    print("|---|---|---|---|---|---|")
    for f in FIGURES:
        m = {arm: statistics.median(r[f] for r in results if r["arm"] == arm)
             for arm in ("none", "live", "dead")}
        print(f"| {f} | {m['none']:.2f} | {m['live']:.2f} | {m['dead']:.2f} "
              f"| {m['dead'] / m['live']:.2f} | {m['live'] / m['none']:.2f} |")


if __name__ == "__main__":
    main()
