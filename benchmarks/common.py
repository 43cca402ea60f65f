"""Shared by every benchmark: where results go and where they came from."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "chapters" / "data"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def provenance(command: str) -> dict:
    """Where a result comes from: commit, command, date, versions, threads, load.

    Call it when the run starts; ``finish`` adds the end time and load.
    """
    return {"commit": _git("rev-parse", "HEAD"),
            "uncommitted_changes": bool(_git("status", "--porcelain", "--",
                                             "leakbook", "benchmarks")),
            "command": command,
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "threads": torch.get_num_threads(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_average_start": [round(v, 2) for v in os.getloadavg()]}


def finish(record: dict) -> dict:
    """Add the end time, the wall time and the load at the end to a provenance."""
    now = datetime.datetime.now(datetime.timezone.utc)
    start = datetime.datetime.fromisoformat(record["started"])
    return {**record, "finished": now.isoformat(timespec="seconds"),
            "wall_seconds": round((now - start).total_seconds(), 1),
            "load_average_end": [round(v, 2) for v in os.getloadavg()]}


def command_line() -> str:
    """How this benchmark was invoked, as one shell line."""
    return " ".join(["python", *sys.argv])


def write(name: str, payload: dict, record: dict, cheap: dict) -> Path:
    """Write chapters/data/<name> with the payload, its provenance and cheap section."""
    out = DATA / name
    out.parent.mkdir(parents=True, exist_ok=True)
    body = {"provenance": finish(record), "cheap": cheap, **payload}
    out.write_text(json.dumps(body, separators=(",", ":")) + "\n")
    return out


def load(name: str) -> dict:
    """A committed benchmark result."""
    return json.loads((DATA / name).read_text())
