#!/usr/bin/env python3
"""Soak test: minutes of steady mixed traffic against a real progimage process.

    python3 bench/soak.py [--minutes 10] [--rate 40] [--binary target/release/progimage]

Starts `progimage serve` on loopback with a temporary filesystem store, then sends
`--rate` requests per second, spread over a pool of threads, of this mix: uploads of
distinct PNGs (one in eight 360 KB of noise, the rest small), cached transform reads,
uncached transforms (a new width each time), on-demand transforms, deletes of earlier
uploads, and bad inputs (truncated and non-image uploads, bad parameters, unknown ids,
a wrong method). It fails (exit 1) if:

- any response is a 5xx, or a status other than the one expected for its kind
  (429 is always accepted: it is the server shedding load as designed);
- resident memory grows after warm-up: the largest RSS sample in the last third of
  the run is more than 15% above the largest in the second third;
- any acknowledged upload that was not deleted is missing or changed at the end.

The server runs with a 1 MiB hot cache: the default 64 MiB fills for the whole run
(every uncached transform is a new result), bounded growth that would mask a leak.

Only the standard library is used. Prints one JSON summary line.
"""

import argparse
import hashlib
import json
import os
import random
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor


def png(width, height, seed, noise=False):
    """An RGB PNG made from `seed`, different for every seed (so every upload is
    new): a gradient, or with `noise` random bytes, which do not compress."""
    noisy = random.Random(seed)

    def row(y):
        if noise:
            return noisy.randbytes(width * 3)
        return bytes(((x * 7 + y * 3 + seed) % 256) for x in range(width * 3))

    rows = b"".join(b"\x00" + row(y) for y in range(height))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        # The pixels repeat every few hundred seeds; the seed in a text chunk does not.
        + chunk(b"tEXt", b"seed\x00" + str(seed).encode())
        + chunk(b"IEND", b"")
    )


def request(base, method, path, body=None, content_type=None):
    """(status, body bytes); never raises for HTTP errors."""
    req = urllib.request.Request(base + path, data=body, method=method)
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def start_server(binary, store):
    # The hot cache (64 MiB by default) fills for the whole run, since every uncached
    # transform is a new result: bounded growth that would hide a leak's. A small one
    # keeps it out of the RSS comparison.
    settings = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    with settings:
        settings.write("hot_cache_bytes = 1048576\n")
    process = subprocess.Popen(
        [binary, "serve", "--config", settings.name, "--listen", "127.0.0.1:0", "--store", store],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        env={**os.environ, "RUST_LOG": "warn,progimage=info", "NO_COLOR": "1"},
        text=True,
    )
    for line in process.stderr:
        found = re.search(r"listen=(\S+)", line)
        if found:
            os.unlink(settings.name)  # read at start-up
            # Keep draining the log so the pipe never fills.
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
            return process, "http://" + found.group(1)
    raise SystemExit("progimage did not start")


class Soak:
    def __init__(self, base):
        self.base = base
        self.lock = threading.Lock()
        self.stored = {}  # id -> sha1 of bytes, acknowledged and not deleted
        self.counts = {}
        self.failures = []
        self.seed = 0

    def record(self, kind, status, expected):
        with self.lock:
            self.counts[f"{kind} {status}"] = self.counts.get(f"{kind} {status}", 0) + 1
            if status != 429 and status not in expected:
                self.failures.append(f"{kind}: {status}, expected {sorted(expected)}")

    def next_seed(self):
        with self.lock:
            self.seed += 1
            return self.seed

    def some_id(self):
        with self.lock:
            return random.choice(list(self.stored)) if self.stored else None

    def upload(self):
        seed = self.next_seed()
        if seed % 8 == 0:
            # 360 KB: longer than the head a transform reads before it queues, so the
            # worker that takes the job reads the rest (and a delete may come between).
            data = png(400, 300, seed, noise=True)
        else:
            data = png(64 + seed % 64, 48, seed)
        status, body = request(self.base, "POST", "/", data, "image/png")
        self.record("upload", status, {200, 201})
        if status in (200, 201):
            with self.lock:
                self.stored[json.loads(body)["id"]] = hashlib.sha1(data).hexdigest()

    def cached(self):
        image = self.some_id()
        if image:
            status, _ = request(self.base, "GET", f"/images/{image}/thumbnail/")
            self.record("cached", status, {200, 404})  # 404: deleted meanwhile

    def uncached(self):
        image = self.some_id()
        if image:
            width = random.randint(8, 400)
            status, _ = request(self.base, "GET", f"/images/{image}/resize/?w={width}&upscale=true")
            self.record("uncached", status, {200, 404})

    def on_demand(self):
        data = png(40, 30, self.next_seed())
        status, _ = request(self.base, "POST", "/on_demand/grayscale/?format=webp", data, "image/png")
        self.record("on_demand", status, {200})

    def delete(self):
        with self.lock:
            if len(self.stored) < 20:
                return
            image = random.choice(list(self.stored))
            del self.stored[image]
        status, _ = request(self.base, "DELETE", f"/images/{image}/")
        self.record("delete", status, {204})

    def bad(self):
        case = random.randrange(5)
        if case == 0:
            data = png(30, 30, self.next_seed())
            status, _ = request(self.base, "POST", "/", data[: len(data) // 2], "image/png")
            self.record("bad truncated", status, {422})
        elif case == 1:
            status, _ = request(self.base, "POST", "/", b"not an image at all", "image/png")
            self.record("bad non-image", status, {415})
        elif case == 2:
            image = self.some_id() or "0" * 40
            status, _ = request(self.base, "GET", f"/images/{image}/resize/?w=-3")
            self.record("bad parameter", status, {400, 404})
        elif case == 3:
            status, _ = request(self.base, "GET", f"/images/{'ab' * 20}/thumbnail/")
            self.record("bad unknown id", status, {404})
        else:
            status, _ = request(self.base, "PUT", "/images/")
            self.record("bad method", status, {405})

    MIX = ["upload"] * 3 + ["cached"] * 6 + ["uncached"] * 3 + ["on_demand"] * 2 + ["delete"] + ["bad"] * 2

    def one(self):
        try:
            getattr(self, random.choice(self.MIX))()
        except Exception as err:  # a dropped connection, a timeout
            with self.lock:
                self.failures.append(f"request failed: {err!r}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--rate", type=float, default=40, help="requests per second")
    parser.add_argument("--binary", default="target/release/progimage")
    args = parser.parse_args()
    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release"], check=True)

    with tempfile.TemporaryDirectory() as store:
        process, base = start_server(args.binary, store)
        soak = Soak(base)
        for _ in range(30):
            soak.upload()
        samples = []
        duration = args.minutes * 60
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=16) as pool:
            sent = 0
            while (elapsed := time.monotonic() - started) < duration:
                due = int(elapsed * args.rate)
                for _ in range(due - sent):
                    pool.submit(soak.one)
                sent = max(sent, due)
                if not samples or elapsed - samples[-1][0] >= 5:
                    samples.append((elapsed, rss_bytes(process.pid)))
                time.sleep(0.01)
        missing = []
        for image, digest in soak.stored.items():
            status, body = request(base, "GET", f"/images/{image}/")
            if status != 200 or hashlib.sha1(body).hexdigest() != digest:
                missing.append(image)
        process.terminate()
        process.wait(timeout=30)

    thirds = [
        [rss for t, rss in samples if lo * duration / 3 <= t < (lo + 1) * duration / 3]
        for lo in range(3)
    ]
    warm, late = max(thirds[1] or [0]), max(thirds[2] or [0])
    grew = warm > 0 and late > warm * 1.15
    summary = {
        "minutes": args.minutes,
        "requests": sum(soak.counts.values()),
        "counts": dict(sorted(soak.counts.items())),
        "failures": soak.failures[:20],
        "failure_count": len(soak.failures),
        "rss_mib": {"middle_third_max": warm >> 20, "last_third_max": late >> 20},
        "rss_grew": grew,
        "uploads_kept": len(soak.stored),
        "uploads_missing": missing[:20],
    }
    print(json.dumps(summary))
    sys.exit(1 if soak.failures or grew or missing else 0)


if __name__ == "__main__":
    main()
