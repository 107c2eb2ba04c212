"""`scripts/bench_reliability.py`: the reliability numbers in one JSON (outputs/bench/reliability.json).

Fuzz cases and failures per reader (`lab.reliability.fuzz`), kills survived per training
script (`lab.reliability.crash`), clients held and leaks found by the viewer under load
(`lab.reliability.viewer_load`). It lives in `viewer` because only the viewer may import all three parts.
"""

from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

from scene3d.config import Range, check


@dataclass
class ReliabilityConfig:
    quick: bool = False  # 200 fuzz cases per reader and 2 kills per script (under 10 min) instead of 2000 and 5
    out: Path = Path("outputs/bench/reliability.json")
    readers: tuple[str, ...] = ()  # empty: all
    scripts: tuple[str, ...] = ()  # empty: all
    clients: Annotated[int, Range(1)] = 50
    waves: Annotated[int, Range(1)] = 3

    def __post_init__(self) -> None:
        check(self)


def run_reliability_bench(config: ReliabilityConfig) -> dict:
    from lab.reliability.crash import SCRIPTS, kill_resume
    from lab.reliability.fuzz import READERS, fuzz_reader, summarize
    from scene3d.checkpoint import atomic_write_json

    n_cases, kills = (200, 2) if config.quick else (2000, 5)
    result: dict = {"quick": config.quick, "machine": f"{platform.machine()} {platform.processor()}".strip(),
                    "readers": {}, "scripts": {}, "viewer": {}}
    for name in config.readers or tuple(READERS):
        t0 = time.monotonic()
        failures, counts = fuzz_reader(name, n_cases)
        result["readers"][name] = {**counts, "failures": len(failures), "failure_kinds": summarize(failures),
                                   "examples": [f.message for f in failures[:3]],
                                   "seconds": round(time.monotonic() - t0, 1)}
        print(f"fuzz {name}: {counts['cases']} cases, {len(failures)} failures", flush=True)
    for name in config.scripts or tuple(SCRIPTS):
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"kill_{name}_") as tmp:
            report = kill_resume(name, Path(tmp), kills=kills, seed=0)
        entry = {k: v for k, v in asdict(report).items() if k != "script"}
        result["scripts"][name] = {**entry, "seconds": round(time.monotonic() - t0, 1)}
        print(f"kill {name}: {report.kills} kills survived, bitwise equal {report.bitwise_equal}, "
              f"problems {report.problems}", flush=True)
    result["viewer"] = viewer_load(config.clients, config.waves)
    print(f"viewer: {result['viewer']}", flush=True)
    atomic_write_json(config.out, result)
    return result


def viewer_load(clients: int, waves: int) -> dict:
    from lab.reliability.viewer_load import load_test, traversal_statuses
    from viewer.inputs import open_input
    from viewer.server import ViewerConfig, ViewerServer

    config = ViewerConfig(port=0)
    config.render.max_side, config.render.settle_s = 64, 0.05
    with ViewerServer(open_input("synthetic:0"), config) as viewer:
        report = load_test(viewer, clients=clients, waves=waves, staying=2)
        statuses = traversal_statuses("127.0.0.1", viewer.port)
    return {"connections": report.connections, "clients_per_wave": clients, "waves": waves, "staying_clients": 2,
            "staying_frames_per_wave": report.staying_frames_per_wave,
            "staying_max_wait_s": round(max(report.staying_wait_s), 2), "starved": report.starved,
            "threads": [report.threads_before, report.threads_after], "pool_threads": report.pool_threads_after,
            "rss_mb": [round(report.rss_mb_before), round(report.rss_mb_after)], "leaks": report.leaks,
            "traversal_requests": len(statuses),
            "traversal_refused": sum(s == 404 and not leaked for s, leaked in statuses.values()),
            "host": config.host}


def table(result: dict) -> str:
    """The markdown table quoted in docs/reliability.md."""
    rows = ["| part | tried | failures |", "| --- | --- | --- |"]
    for name, r in result["readers"].items():
        rows.append(f"| reader `{name}` | {r['cases']} cases ({r['loaded']} loaded, {r['errors']} clear errors) "
                    f"| {r['failures']} |")
    for name, r in result["scripts"].items():
        rows.append(f"| script `{name}` | {r['kills']} kills ({r['kills_in_write']} in a checkpoint write), "
                    f"bitwise equal: {r['bitwise_equal']} | {len(r['problems'])} |")
    v = result["viewer"]
    rows.append(f"| viewer | {v['connections']} connections, 2 staying clients served after every wave, "
                f"{v['traversal_refused']}/{v['traversal_requests']} traversal requests refused | "
                f"{len(v['leaks'])} leaks{', starved' if v['starved'] else ''} |")
    return "\n".join(rows)
