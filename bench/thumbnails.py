#!/usr/bin/env python3
"""300 px JPEG thumbnails at q80: progimage's engine beside libvips and Pillow, one run.

Usage: python3 bench/thumbnails.py [--runs N] [--corpus DIR] [--write BENCHMARKS.md]

Installs nothing itself: `pip install pyvips pyvips-binary Pillow numpy` first (the
script says so if they are missing). Builds the engine in release mode, then for each
photo, each tool in its own fresh process (single-threaded, caches off):
  - median wall time of N thumbnails, encoded bytes in, encoded bytes out;
  - peak extra memory: the most resident memory during the runs, minus the process's
    resident memory before the first one (so interpreter and binary sizes cancel out);
  - PSNR (RGB) and SSIM (luma) of its output against a reference: the full image
    decoded and resized with Lanczos by Pillow, no shortcuts, to the same size.
Times are also given as ratios to the faster peer measured in the same run, which is
what the targets are about: these machines are shared and noisy.
"""

import argparse
import datetime
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

import report

FILES = [
    "photo-eveningglow-2560x1600.jpg",
    "photo-storm-1920x1280.jpg",
    "photo-fujifilm-3648x2736.mpo",
    "render-volna-5120x2880-progressive.jpg",
    "webp-wood-4096x4096.webp",
    "render-cascade-3840x2160.png",
    "photo-cups-2560x1600-progressive.jpg",
    "photo-path-2560x1600-icc.jpg",
]

ROOT = report.ROOT

# Each peer runs in a child interpreter: time and memory are its own.
PEER = r'''
import json, os, sys, time
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
tool, path, runs, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
data = open(path, "rb").read()
if tool == "libvips":
    import pyvips
    pyvips.cache_set_max(0)
    def thumb():
        return pyvips.Image.thumbnail_buffer(data, 300).jpegsave_buffer(Q=80)
else:
    import io
    from PIL import Image
    def thumb():
        im = Image.open(io.BytesIO(data))
        im.draft("RGB", (300, 300 * im.height // im.width))
        im = im.convert("RGB")
        im.thumbnail((300, 10**6))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=80)
        return buf.getvalue()
before = rss("VmRSS:")
times = []
for _ in range(runs):
    t = time.perf_counter()
    result = thumb()
    times.append((time.perf_counter() - t) * 1000)
open(out, "wb").write(result)
times.sort()
print(json.dumps({"median_ms": times[len(times) // 2], "peak_extra_kb": rss("VmHWM:") - before}))
'''


def ours(binary, path, runs, out):
    result = subprocess.run([binary, path, str(runs), out], check=True, capture_output=True, text=True)
    return json.loads(result.stdout)


def peer(tool, path, runs, out):
    env = dict(os.environ, VIPS_CONCURRENCY="1", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", PEER, tool, path, str(runs), out],
                            check=True, capture_output=True, text=True, env=env)
    return json.loads(result.stdout)


def quality(output, reference_path):
    """PSNR (dB, RGB) and SSIM (luma, 11x11 Gaussian window, sigma 1.5) of `output`
    against the reference: the full image resized with Lanczos to the same size."""
    import numpy
    from PIL import Image
    got = Image.open(output).convert("RGB")
    source = Image.open(reference_path)
    source.load()
    reference = source.convert("RGB").resize(got.size, Image.Resampling.LANCZOS)
    a = numpy.asarray(got, dtype=numpy.float64)
    b = numpy.asarray(reference, dtype=numpy.float64)
    mse = numpy.mean((a - b) ** 2)
    psnr = float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)
    return psnr, ssim(a @ LUMA, b @ LUMA)


LUMA = [0.299, 0.587, 0.114]


def ssim(a, b):
    import numpy
    window = numpy.exp(-0.5 * ((numpy.arange(11) - 5) / 1.5) ** 2)
    window /= window.sum()

    def blur(x):
        rows = numpy.apply_along_axis(numpy.convolve, 1, x, window, mode="valid")
        return numpy.apply_along_axis(numpy.convolve, 0, rows, window, mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    covariance = blur(a * b) - mu_a * mu_b
    index = ((2 * mu_a * mu_b + c1) * (2 * covariance + c2)) / (
        (mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(index.mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--corpus", default=os.path.join(ROOT, "..", "shared", "corpus"))
    parser.add_argument("--write", help="write the table into this markdown file")
    args = parser.parse_args()
    try:
        import numpy, pyvips, PIL  # noqa: F401
    except ImportError as missing:
        sys.exit(f"{missing}: run `pip install pyvips pyvips-binary Pillow numpy` first")

    subprocess.run(["cargo", "build", "--release", "--example", "thumbnail_timing"], cwd=ROOT, check=True)
    binary = os.path.join(ROOT, "target", "release", "examples", "thumbnail_timing")
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in FILES:
            path = os.path.join(args.corpus, name)
            if not os.path.exists(path):
                print(f"skipping {name}: not in {args.corpus}", file=sys.stderr)
                continue
            row = {"file": name}
            for tool in ("progimage", "libvips", "Pillow"):
                out = os.path.join(scratch, f"{tool}.jpg")
                measured = ours(binary, path, args.runs, out) if tool == "progimage" else peer(tool, path, args.runs, out)
                if tool == "progimage":
                    measured["peak_extra_kb"] = measured.pop("peak_rss_kb") - measured.pop("start_rss_kb", 0)
                measured["psnr"], measured["ssim"] = quality(out, path)
                row[tool] = measured
                print(f"{name:42} {tool:9} {measured['median_ms']:8.2f} ms  "
                      f"{measured['peak_extra_kb'] / 1024:7.1f} MiB  {measured['psnr']:5.2f} dB  SSIM {measured['ssim']:.4f}", file=sys.stderr)
            rows.append(row)

    lines = [
        "| file | progimage ms | libvips ms | Pillow ms | ratio to faster peer | peak extra MiB (ours / vips / Pillow) | PSNR dB vs Lanczos (ours / vips / Pillow) | SSIM vs Lanczos (ours / vips / Pillow) |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    ratios = []
    for row in rows:
        best_peer = min(row["libvips"]["median_ms"], row["Pillow"]["median_ms"])
        ratio = row["progimage"]["median_ms"] / best_peer
        ratios.append(ratio)
        mib = " / ".join(f"{row[t]['peak_extra_kb'] / 1024:.1f}" for t in ("progimage", "libvips", "Pillow"))
        db = " / ".join(f"{row[t]['psnr']:.1f}" for t in ("progimage", "libvips", "Pillow"))
        similarity = " / ".join(f"{row[t]['ssim']:.4f}" for t in ("progimage", "libvips", "Pillow"))
        lines.append(f"| {row['file']} | {row['progimage']['median_ms']:.1f} | {row['libvips']['median_ms']:.1f} | "
                     f"{row['Pillow']['median_ms']:.1f} | {ratio:.2f} | {mib} | {db} | {similarity} |")
    geomean = math.exp(statistics.fmean(math.log(r) for r in ratios)) if ratios else float("nan")
    lines.append(f"| **geometric mean** | | | | **{geomean:.2f}** | | | |")
    table = "\n".join(lines)
    print(table)

    if args.write:
        report.write_section(
            args.write,
            "Thumbnails: 300 px wide JPEG at q80, single-threaded",
            f"{datetime.date.today()}, commit {report.commit()}, {report.machine()}, median of {args.runs} runs.\n"
            f"Command: `python3 bench/thumbnails.py --runs {args.runs} --write BENCHMARKS.md`\n\n{table}\n",
        )

if __name__ == "__main__":
    main()
