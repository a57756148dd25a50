#!/usr/bin/env python3
"""Load benchmark: progimage against thumbor, ipx and nginx, on loopback, in one run.

    bench/http.sh [--duration 10] [--connections 1,4,16] [--workloads uncached,cached,uploads]
                  [--repeat 3] [--write BENCHMARKS.md]

bench/http.sh installs the peers and wrk and builds progimage in release mode, then
runs this. Every run starts its server afresh (so peak RSS is that run's), warms it
with a few requests, and drives it with wrk for --duration seconds. A 10 s run moves
by 10-25% from one run to the next here (which core each client thread connects
from, the host's other tenants, which drift over minutes), so each row is run
--repeat times, the servers of a row taking turns; the table shows the run with the
median requests/s (uploads: see 3), and every run's figure is printed with the
targets.

1. Uncached 300 px thumbnails of the 2560x1600 photo and of the 10 MP camera photo.
   progimage gets a new cache key on every request (`bg=` is a cache-key option that
   does not change an opaque JPEG), so each request decodes, resizes, encodes and
   stores; its /metrics must then count as many cache misses as requests. thumbor
   (file loader, no storage, no result storage, 2 processes, one per core) and ipx
   (sharp) keep no results, so they compute every request anyway.
2. Cached transform GETs: progimage serving a stored thumbnail, nginx serving the same
   bytes from a file.
3. Uploads of distinct 1-10 MB photos (raw bodies, each with distinct trailing bytes),
   with the CPU the server spent per megabyte, against `sha1sum` plus `cp` of the same
   files measured after each run; the row is the run with the median ratio.

Memory on these machines is a virtual machine's, and the hypervisor takes back the
pages the guest has left free for a while (virtio-balloon free page reporting):
touching one again costs a fault on the host. Writing a new 1 GB file took 0.7 ms of
CPU per MB right after 8 GiB had been touched and freed, 1.0 after 5 s, 3.1 after
20 s, on the 2-core sandbox. `cp` stores new bytes in the page cache and pays this;
the server writes originals of 1 MiB or more around it (DECISIONS, "Originals written
around the page cache") but its sidecars and short tails through it. Each starts after
the same pause (SETTLE_SECONDS), from memory handed back to the host, so neither is
flattered by pages the other just freed.

Prints one markdown table and the targets as ratios; --write puts both into
BENCHMARKS.md. Needs only the standard library, wrk, nginx, and the peers under
--peers (bench/http.sh puts them there).
"""

import argparse
import datetime
import functools
import glob
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import report

ROOT = report.ROOT
PHOTOS = ["photo-eveningglow-2560x1600.jpg", "photo-fujifilm-3648x2736.mpo"]
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def fetch(url, data=None, content_type=None):
    """(status, headers, body) of one request; HTTP errors are answers, not raised."""
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def process_tree(pid):
    """pid and all its descendants."""
    children = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.split("/")[2]))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def peak_rss_mib(pid):
    """Sum of the peak resident sizes (VmHWM) of the process tree."""
    total = 0
    for member in process_tree(pid):
        try:
            for line in open(f"/proc/{member}/status"):
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def cpu_seconds(pid):
    """User plus system CPU of the process tree so far."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = open(f"/proc/{member}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


class Server:
    """A server process on a free loopback port, stopped with its whole process group."""

    name = "?"

    def __init__(self, workdir):
        self.workdir = workdir
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = None

    def command(self):
        raise NotImplementedError

    def write_file(self, name, text):
        """Writes a configuration file into the work directory; its path."""
        path = os.path.join(self.workdir, name)
        with open(path, "w") as out:
            out.write(text)
        return path

    def ready_path(self):
        return "/"

    def env(self):
        return os.environ

    def __enter__(self):
        log = open(os.path.join(self.workdir, f"{self.name}.log"), "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=log, env=self.env(),
                                        cwd=self.workdir, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.base + self.ready_path(), timeout=1).read()
                return self
            except urllib.error.HTTPError:
                return self  # it answers
            except OSError:
                if self.process.poll() is not None:
                    sys.exit(f"{self.name} exited at start; see {log.name}")
                time.sleep(0.1)
        sys.exit(f"{self.name} did not start within 30 s; see {log.name}")

    def __exit__(self, *_):
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Progimage(Server):
    name = "progimage"

    def __init__(self, workdir, binary):
        super().__init__(workdir)
        self.binary = binary
        self.store = tempfile.mkdtemp(prefix="store-", dir=workdir)

    def command(self):
        return [self.binary, "serve", "--listen", f"127.0.0.1:{self.port}", "--store", self.store]

    def ready_path(self):
        return "/healthz"

    def env(self):
        return {**os.environ, "NO_COLOR": "1"}

    def __exit__(self, *exc):
        super().__exit__(*exc)
        # The store stays until the run ends (with the work directory) unless the row
        # removes it: on ext4 without a journal, as on these machines, creating a file
        # within 30 s of many deletions scans past every recently deleted inode
        # (`recently_deleted` in the kernel's ialloc.c), so the next row would pay for
        # this row's clean-up: 8% of the server's CPU an uncached thumbnail, profiled.

    def upload(self, path):
        status, _, body = fetch(self.base + "/", open(path, "rb").read(), "application/octet-stream")
        if status != 201:
            sys.exit(f"progimage refused {path}: {status} {body[:200]!r}")
        return json.loads(body)["id"]

    def cache_counts(self):
        """{"HIT": n, "MISS": n, ...} from /metrics."""
        _, _, body = fetch(self.base + "/metrics")
        counts = {}
        for line in body.decode().splitlines():
            found = re.match(r'progimage_cache_lookups_total\{.*result="(\w+)".*\} (\d+)', line)
            if found:
                counts[found.group(1)] = counts.get(found.group(1), 0) + int(found.group(2))
        return counts


class Thumbor(Server):
    name = "thumbor"

    def __init__(self, workdir, peers, images):
        super().__init__(workdir)
        self.executable = os.path.join(peers, "thumbor", "bin", "thumbor")
        self.conf = self.write_file("thumbor.conf",
                                    "LOADER = 'thumbor.loaders.file_loader'\n"
                                    f"FILE_LOADER_ROOT_PATH = {images!r}\n"
                                    "STORAGE = 'thumbor.storages.no_storage'\n"
                                    "RESULT_STORAGE = None\n"
                                    "QUALITY = 80\n"
                                    "ALLOW_UNSAFE_URL = True\n")

    def command(self):
        processes = str(os.cpu_count())
        return [self.executable, "-c", self.conf, "-i", "127.0.0.1", "-p", str(self.port),
                "--processes", processes]

    def ready_path(self):
        return "/healthcheck"


class Ipx(Server):
    name = "ipx"

    def __init__(self, workdir, peers, images):
        super().__init__(workdir)
        self.executable = os.path.join(peers, "ipx", "node_modules", ".bin", "ipx")
        self.images = images

    def command(self):
        return [self.executable, "serve", "--dir", self.images, "--host", "127.0.0.1",
                "--port", str(self.port)]


class Nginx(Server):
    name = "nginx"

    def __init__(self, workdir, root):
        super().__init__(workdir)
        self.conf = self.write_file("nginx.conf",
                                    f"daemon off;\nworker_processes auto;\npid {workdir}/nginx.pid;\n"
                                    f"error_log {workdir}/nginx-error.log;\n"
                                    "events { worker_connections 1024; }\n"
                                    "http {\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n"
                                    "  types { image/jpeg jpg; }\n"
                                    f"  client_body_temp_path {workdir}/nginx-body;\n"
                                    f"  server {{ listen 127.0.0.1:{self.port}; root {root}; }}\n}}\n")

    def command(self):
        return ["nginx", "-c", self.conf, "-p", self.workdir]


def wrk(base, connections, duration, *script_args):
    """Runs wrk with bench/wrk.lua; the RESULT line as a dict."""
    command = ["wrk", "-t", str(min(connections, os.cpu_count())), "-c", str(connections),
               "-d", f"{duration}s", "--timeout", "60s", "-s", os.path.join(ROOT, "bench", "wrk.lua"),
               base, "--", *script_args]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = re.search(r"^RESULT (.*)$", output, re.M)
    if not found:
        sys.exit(f"wrk printed no result:\n{output}")
    result = json.loads(found.group(1))
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["failed"] = sum(result["errors"].values())
    return result


def measure(server, connections, duration, *script_args):
    """One row: wrk against a started server, with its CPU and peak RSS."""
    cpu_before = cpu_seconds(server.process.pid)
    result = wrk(server.base, connections, duration, *script_args)
    result["cpu_s"] = cpu_seconds(server.process.pid) - cpu_before
    result["rss_mib"] = peak_rss_mib(server.process.pid)
    return result


def warm(url, times=4):
    for _ in range(times):
        status, _, body = fetch(url)
        if status != 200:
            sys.exit(f"warm-up GET {url}: {status} {body[:200]!r}")
    return body


def alternating(args, servers):
    """Runs each of `servers` (name: a function that starts that server and measures one
    row) --repeat times, taking turns, so that the host's drift over the minutes of a
    section falls on every server alike. Returns (name, row) pairs: each server's run
    with the median req/s, carrying every run's req/s in order."""
    runs = {name: [] for name in servers}
    for _ in range(args.repeat):
        for name, run in servers.items():
            runs[name].append(run())
    rows = []
    for name, results in runs.items():
        ranked = sorted(results, key=lambda result: result["rps"])
        median = dict(ranked[len(ranked) // 2])
        median["runs_rps"] = [result["rps"] for result in results]
        rows.append((name, median))
    return rows


def uncached(args, workdir, images, photo):
    def progimage(connections):
        with Progimage(workdir, args.binary) as server:
            image_id = server.upload(os.path.join(images, photo))
            warm(f"{server.base}/images/{image_id}/thumbnail/?w=300&q=81")
            before = server.cache_counts()
            row = measure(server, connections, args.duration,
                          "get", f"/images/{image_id}/thumbnail/?w=300&bg={{n}}")
            after = server.cache_counts()
            misses = after.get("MISS", 0) - before.get("MISS", 0)
            hits = after.get("HIT", 0) - before.get("HIT", 0)
            if hits or misses < row["requests"]:
                sys.exit(f"progimage uncached run was not all misses: {misses} misses, {hits} hits, "
                         f"{row['requests']} requests")
            return row

    def thumbor(connections):
        with Thumbor(workdir, args.peers, images) as server:
            path = f"/unsafe/300x0/{photo}"
            warm(server.base + path)
            return measure(server, connections, args.duration, "get", path)

    def ipx(connections):
        with Ipx(workdir, args.peers, images) as server:
            path = f"/w_300,q_80/{photo}"
            warm(server.base + path)
            return measure(server, connections, args.duration, "get", path)

    rows = []
    for connections in args.connections:
        servers = {name: functools.partial(run, connections)
                   for name, run in (("progimage", progimage), ("thumbor", thumbor), ("ipx", ipx))}
        rows += [(name, connections, row) for name, row in alternating(args, servers)]
    return rows


def cached(args, workdir, images, photo):
    static = tempfile.mkdtemp(prefix="static-", dir=workdir)
    for directory in (workdir, static):
        os.chmod(directory, 0o755)  # nginx's workers run as an unprivileged user

    def progimage(connections, served):
        with Progimage(workdir, args.binary) as server:
            image_id = server.upload(os.path.join(images, photo))
            path = f"/images/{image_id}/thumbnail/?w=300"
            served["thumbnail"] = warm(server.base + path)
            with open(os.path.join(static, "thumbnail.jpg"), "wb") as out:
                out.write(served["thumbnail"])
            return measure(server, connections, args.duration, "get", path)

    def nginx(connections, served):
        with Nginx(workdir, static) as server:
            if warm(server.base + "/thumbnail.jpg") != served["thumbnail"]:
                sys.exit("nginx served other bytes than progimage")
            return measure(server, connections, args.duration, "get", "/thumbnail.jpg")

    rows = []
    for connections in args.connections:
        served = {}  # the thumbnail progimage served, which nginx then serves from disk
        servers = {"progimage": functools.partial(progimage, connections, served),
                   "nginx": functools.partial(nginx, connections, served)}
        rows += [(name, connections, row) for name, row in alternating(args, servers)]
    return rows


SETTLE_SECONDS = 30


def settle():
    """Waits until memory freed so far has gone back to the hypervisor (see the module
    doc), so the upload measurement that follows starts from the same state as the
    others."""
    time.sleep(SETTLE_SECONDS)


def upload_files(corpus):
    """The corpus's photos and renders of 1 to 10 MB."""
    files = []
    for path in sorted(glob.glob(os.path.join(corpus, "*"))):
        if re.search(r"\.(jpe?g|mpo|png|webp)$", path) and 1e6 <= os.path.getsize(path) <= 10e6:
            files.append(path)
    return files


def uploads(args, workdir, files):
    """Each row --repeat times, each run followed by its own `sha1sum` + `cp` baseline;
    the table shows the run with the median ratio of the two. The baseline alone moved
    by 16% between the rows of one run."""
    rows = []
    for connections in args.connections:
        runs = []
        for _ in range(args.repeat):
            settle()
            with Progimage(workdir, args.binary) as server:
                server.upload(files[0])
                row = measure(server, connections, args.duration, "upload", *files)
            shutil.rmtree(server.store)  # gigabytes; the pauses below outlast the 30 s
            row["cpu_ms_per_mb"] = row["cpu_s"] * 1000 / (row["bytes_sent"] / 1e6)
            settle()
            row["baseline_ms_per_mb"] = hash_and_copy_cpu_ms_per_mb(workdir, files, row["requests"])
            runs.append(row)
        def ratio(run):
            return run["cpu_ms_per_mb"] / run["baseline_ms_per_mb"]

        median = dict(sorted(runs, key=ratio)[len(runs) // 2])
        median["runs_ratio"] = [ratio(run) for run in runs]
        rows.append(("progimage", connections, median))
    return rows


def hash_and_copy_cpu_ms_per_mb(workdir, files, count):
    """CPU per megabyte of what an upload must at least do, for the same `count` files
    the server stored: `sha1sum` them, and `cp` them to new files that stay (so the
    page cache grows as the store's did). One process of each, so start-up hardly
    counts; the sources are hard links to the photos, in the order wrk sent them."""
    sources = tempfile.mkdtemp(prefix="sources-", dir=workdir)
    names = []
    for index in range(count):
        name = os.path.join(sources, str(index))
        os.link(files[(index + 1) % len(files)], name)
        names.append(name)
    target = os.path.join(workdir, "copies")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(["sha1sum", *names], check=True, stdout=subprocess.DEVNULL)
    subprocess.run(["cp", "-r", sources, target], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    megabytes = sum(os.path.getsize(name) for name in names) / 1e6
    shutil.rmtree(sources)
    shutil.rmtree(target)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu * 1000 / megabytes


def table(sections):
    lines = ["| workload | server | connections | req/s | p50 ms | p99 ms | failed | peak RSS MiB | CPU ms/req |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for workload, rows in sections:
        for server, connections, row in rows:
            cpu_per_request = row["cpu_s"] * 1000 / max(row["requests"], 1)
            lines.append(f"| {workload} | {server} | {connections} | {row['rps']:.0f} | "
                         f"{row['p50_us'] / 1000:.1f} | {row['p99_us'] / 1000:.1f} | {row['failed']} | "
                         f"{row['rss_mib']:.0f} | {cpu_per_request:.2f} |")
    return "\n".join(lines)


def one_core_note(thumbor, connections):
    """A warning when thumbor, given connections for both its processes, kept one
    busy: the kernel hands each long-lived connection to whichever process accepts it,
    and wrk opens them all at once, so sometimes one process gets them all. Its req/s
    is then half what it can do; CPU a request is the fair comparison."""
    if thumbor is None or connections < 2:
        return ""
    cores = thumbor["cpu_s"] / (thumbor["duration_us"] / 1e6)
    if cores >= 1.3:
        return ""
    return (f" (thumbor kept {cores:.1f} cores busy: one process served every connection; "
            f"compare CPU a request)")


def targets(sections):
    """The issue's targets, as ratios within this run."""
    lines = []
    for workload, rows in sections:
        by = {(server, connections): row for server, connections, row in rows}
        for connections in sorted({connections for _, connections, _ in rows}):
            ours = by[("progimage", connections)]
            peers = {server: row for (server, c), row in by.items() if c == connections and server != "progimage"}
            if workload.startswith("uploads"):
                baseline = ours["baseline_ms_per_mb"]
                ratio = ours["cpu_ms_per_mb"] / baseline
                runs = ", ".join(f"{run_ratio:.2f}x" for run_ratio in ours["runs_ratio"])
                lines.append(f"- {workload}, {connections} conn: {ours['cpu_ms_per_mb']:.2f} CPU ms/MB, "
                             f"{ratio:.2f}x of sha1sum + cp of the same files ({baseline:.2f} ms/MB; target < 1) "
                             f"{'✓' if ratio < 1 else '✗'} (median; every run's ratio, in order: {runs})")
                continue
            runs = "; ".join(f"{name} " + ", ".join(f"{rps:.0f}" for rps in row["runs_rps"])
                             for name, row in (("progimage", ours), *peers.items()))
            if "nginx" in peers:
                ratio = ours["rps"] / peers["nginx"]["rps"]
                lines.append(f"- {workload}, {connections} conn: {ratio:.2f}x nginx's req/s (target ≥ 0.8) "
                             f"{'✓' if ratio >= 0.8 else '✗'} (medians; every run's req/s, in order: {runs})")
            else:
                best_name, best = max(peers.items(), key=lambda item: item[1]["rps"])
                ratio = ours["rps"] / best["rps"]
                met = ratio >= 2 and ours["p99_us"] < best["p50_us"]
                lines.append(f"- {workload}, {connections} conn: {ratio:.2f}x {best_name}'s req/s (target ≥ 2), "
                             f"p99 {ours['p99_us'] / 1000:.1f} ms vs its p50 {best['p50_us'] / 1000:.1f} ms "
                             f"{'✓' if met else '✗'}{one_core_note(peers.get('thumbor'), connections)} "
                             f"(medians; every run's req/s, in order: {runs})")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=10, help="seconds of load per row")
    parser.add_argument("--connections", default="1,4,16",
                        type=lambda text: [int(part) for part in text.split(",")])
    parser.add_argument("--corpus", default=os.path.join(ROOT, "..", "shared", "corpus"))
    parser.add_argument("--peers", default=os.path.join(ROOT, "target", "bench-peers"))
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "progimage"))
    parser.add_argument("--write", help="write the table into this markdown file")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each row (thumbnail rows: the servers taking turns); the median is reported")
    parser.add_argument("--workloads", default="uncached,cached,uploads",
                        help="which rows to run (a partial run is never written)")
    args = parser.parse_args()
    args.peers, args.binary = os.path.abspath(args.peers), os.path.abspath(args.binary)

    files = upload_files(args.corpus)
    if not files or not all(os.path.exists(os.path.join(args.corpus, photo)) for photo in PHOTOS):
        sys.exit(f"the corpus at {args.corpus} lacks {PHOTOS} or photos of 1-10 MB")
    with tempfile.TemporaryDirectory(prefix="progimage-http-") as workdir:
        images = os.path.join(workdir, "images")
        os.mkdir(images)
        for photo in PHOTOS:
            shutil.copy(os.path.join(args.corpus, photo), images)
        files = [shutil.copy(path, images) for path in files]
        sections = []
        workloads = args.workloads.split(",")
        if "uncached" in workloads:
            for photo in PHOTOS:
                sections.append((f"uncached 300 px thumbnail, {photo}", uncached(args, workdir, images, photo)))
                print(table(sections[-1:]), flush=True)
        if "cached" in workloads:
            sections.append((f"cached thumbnail GET ({PHOTOS[0]})", cached(args, workdir, images, PHOTOS[0])))
            print(table(sections[-1:]), flush=True)
        if "uploads" in workloads:
            sizes = ", ".join(f"{os.path.getsize(path) / 1e6:.1f}" for path in files)
            sections.append((f"uploads ({len(files)} photos of {sizes} MB)", uploads(args, workdir, files)))

    body = (f"{datetime.date.today()}, commit {report.commit()}, {report.machine()}; "
            f"{args.duration} s per run; each row is the median of {args.repeat} runs (thumbnails: "
            f"the servers taking turns; uploads: by the ratio to the baseline run after each); "
            f"wrk on the same machine.\n"
            f"Command: `bench/http.sh --duration {args.duration} --repeat {args.repeat} --write BENCHMARKS.md`\n\n"
            f"{table(sections)}\n\nTargets, as ratios within this run:\n\n{targets(sections)}\n")
    print("\n" + body)
    if args.write and len(workloads) < 3:
        sys.exit("a partial run is not written: run every workload to compare against the peers")
    if args.write:
        report.write_section(args.write, "Under load: progimage, thumbor, ipx and nginx over HTTP", body)


if __name__ == "__main__":
    main()
