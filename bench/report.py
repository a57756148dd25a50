"""What the benchmark scripts share: where they ran, and writing their table into
BENCHMARKS.md in place of the section they wrote last time."""

import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def machine():
    """e.g. "2 cores, Intel(R) Xeon(R) Processor, Linux 6.18.44"."""
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, {platform.system()} {platform.release()}"


def commit():
    """The short hash of HEAD, with "+changes" when the tree differs from it."""
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return head + ("+changes" if dirty else "")


def write_section(path, heading, body):
    """Puts `## heading` and `body` into the markdown file at `path`, replacing the
    section of that heading (up to the next `## `) or appending it."""
    path = os.path.join(ROOT, path)
    text = open(path).read() if os.path.exists(path) else "# Benchmarks\n\n"
    section = f"## {heading}\n\n{body.rstrip()}\n"
    marker = f"## {heading}\n"
    if marker in text:
        start = text.index(marker)
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end:] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with open(path, "w") as out:
        out.write(text)
