"""The viewer under load, with real websocket clients (the protocol viser's own page speaks).

`load_test(viewer)` keeps a few clients connected and moving their cameras while waves of other
clients connect, move, sometimes wait for a frame, and leave; it reports the frames every
staying client received during the churn, and the server's threads, per-client renderers,
connected clients and resident memory before and after. `retained_kb_per_connection` measures
what the viewer keeps per connection once warm, with allocations traced (stable where resident
memory is not: it ignores allocator arenas and untouched pages). `traversal_statuses` asks the HTTP
side for files outside the viewer's own assets.
"""

from __future__ import annotations

import asyncio
import gc
import http.client
import math
import threading
import time
import tracemalloc
from dataclasses import dataclass, field

import msgspec
import numpy as np
import viser
import viser.transforms as vtf
import websockets
import zstandard

TRAVERSALS = ("/../../../../etc/passwd", "/..%2f..%2f..%2fetc%2fpasswd", "/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
              "/assets/../../../../etc/passwd", "/..\\..\\..\\etc\\passwd", "//etc/passwd",
              "/%252e%252e/%252e%252e/etc/passwd", "/.%2e/.%2e/.%2e/etc/passwd")


def camera_message(x: float, width: int = 160, height: int = 120) -> bytes:
    """A client's camera update (viser's `ViewerCameraMessage`) looking at the origin from (x, -4, 2)."""
    position, target = np.array([x, -4.0, 2.0]), np.array([0.0, 0.0, 0.2])
    z = (target - position) / np.linalg.norm(target - position)
    xa = np.cross(z, [0.0, 0.0, 1.0])
    xa /= np.linalg.norm(xa)
    wxyz = vtf.SO3.from_matrix(np.stack([xa, np.cross(z, xa), z], 1)).wxyz
    return msgspec.msgpack.encode({
        "type": "ViewerCameraMessage", "wxyz": [float(v) for v in wxyz], "position": position.tolist(),
        "fov": math.radians(50), "near": 0.01, "far": 100.0, "image_height": height, "image_width": width,
        "look_at": target.tolist(), "up_direction": [0.0, 0.0, 1.0]})


def message_types(frame: bytes) -> list[str]:
    """The message types in one server->client websocket frame (viser's wire format)."""
    size, csize = int.from_bytes(frame[:8], "little"), int.from_bytes(frame[8:16], "little")
    inner = zstandard.ZstdDecompressor().decompress(frame[16 : 16 + csize], max_output_size=size)
    return [m["type"] for m in msgspec.msgpack.decode(inner)["messages"]]


def _connect(url: str):
    return websockets.connect(url, subprotocols=[f"viser-v{viser.__version__}"], max_size=None, open_timeout=30)


async def churn_client(url: str, moves: int, wait_for_frame: bool) -> bool:
    """Connect, move the camera, optionally wait for one rendered frame, leave. True if a frame came."""
    async with _connect(url) as ws:
        for i in range(moves):
            await ws.send(camera_message(0.1 * i))
        deadline = time.monotonic() + 30
        while wait_for_frame and time.monotonic() < deadline:
            frame = await asyncio.wait_for(ws.recv(), timeout=30)
            if "BackgroundImageMessage" in message_types(frame):
                return True
    return False


async def staying_client(url: str, stop: asyncio.Event, frames: list[float], period_s: float = 0.25) -> None:
    """Stay connected, move the camera every `period_s`, record when each rendered frame arrives."""
    async with _connect(url) as ws:
        i = 0
        next_move = 0.0
        while not stop.is_set():
            if time.monotonic() >= next_move:
                await ws.send(camera_message(0.05 * (i % 40)))
                i, next_move = i + 1, time.monotonic() + period_s
            try:
                frame = await asyncio.wait_for(ws.recv(), timeout=0.1)
            except TimeoutError:
                continue
            if "BackgroundImageMessage" in message_types(frame):
                frames.append(time.monotonic())


@dataclass
class LoadReport:
    clients_per_wave: int
    waves: int
    staying: int
    connections: int = 0
    churn_frames: int = 0  # frames churning clients waited for and got
    staying_frames_per_wave: list[list[int]] = field(default_factory=list)  # [wave][client], wave start to next frame
    staying_wait_s: list[float] = field(default_factory=list)  # per wave: longest wait for a stayer's next frame
    threads_before: int = 0  # not counting viser's callback pool (idle workers, at most 32, kept for reuse)
    threads_after: int = 0
    pool_threads_after: int = 0
    renderers_after: int = 0
    clients_after: int = 0
    rss_mb_before: float = 0.0
    rss_mb_after: float = 0.0
    seconds: float = 0.0

    @property
    def leaks(self) -> list[str]:
        """What did not return to the baseline (threads, renderers, clients, > 50 MB of memory)."""
        found = []
        if self.threads_after > self.threads_before:
            found.append(f"threads {self.threads_before} -> {self.threads_after}")
        if self.pool_threads_after > 32:
            found.append(f"{self.pool_threads_after} callback pool threads (its bound is 32)")
        if self.renderers_after:
            found.append(f"{self.renderers_after} renderers left")
        if self.clients_after:
            found.append(f"{self.clients_after} clients left")
        if self.rss_mb_after - self.rss_mb_before > 50:
            found.append(f"memory {self.rss_mb_before:.0f} -> {self.rss_mb_after:.0f} MB")
        return found

    @property
    def starved(self) -> bool:
        """Whether some staying client got no new frame within the timeout after some wave."""
        return any(not math.isfinite(w) for w in self.staying_wait_s)


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def own_threads(viewer) -> tuple[int, int]:
    """(threads outside viser's callback pool, threads in it). The pool (`ThreadPoolExecutor(32)`
    inside viser) keeps idle workers for reuse, so it is bounded rather than back to baseline."""
    pool = set(getattr(viewer.server._thread_executor, "_threads", ()))  # viser's private pool
    alive = threading.enumerate()
    return sum(t not in pool for t in alive), sum(t in pool for t in alive)


def _settle(viewer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if viewer.scene.n_renderers == 0 and not viewer.server.get_clients():
            break
        time.sleep(0.05)
    gc.collect()


def load_test(viewer, clients: int = 50, waves: int = 3, staying: int = 2, moves: int = 3,
              wait_every: int = 10, frame_timeout_s: float = 15.0) -> LoadReport:
    """Waves of `clients` connecting and leaving while `staying` clients keep moving and rendering.
    Every `wait_every`-th churning client waits for its first frame before leaving; after each
    wave every staying client must receive a new frame within `frame_timeout_s`."""
    url = viewer.url.replace("http", "ws")
    report = LoadReport(clients, waves, staying)
    async def run(n_waves: int, record: bool) -> None:
        stop = asyncio.Event()
        frames: list[list[float]] = [[] for _ in range(staying)]
        stayers = [asyncio.create_task(staying_client(url, stop, frames[k])) for k in range(staying)]
        await asyncio.sleep(1.0)
        for _ in range(n_waves):
            t0 = time.monotonic()
            got = await asyncio.gather(*[churn_client(url, moves, k % wait_every == 0) for k in range(clients)])
            t1 = time.monotonic()  # every stayer must get a new frame soon after the wave
            while time.monotonic() - t1 < frame_timeout_s and not all(f and f[-1] >= t1 for f in frames):
                await asyncio.sleep(0.05)
            if record:
                report.connections += clients
                report.churn_frames += sum(got)
                report.staying_frames_per_wave.append([sum(t0 <= t for t in f) for f in frames])
                report.staying_wait_s.append(max((f[-1] - t1 if f and f[-1] >= t1 else float("inf"))
                                                 for f in frames))
        stop.set()
        await asyncio.gather(*stayers)

    # A first wave warms up imports, renders, viser's callback pool and its threads' malloc arenas.
    asyncio.run(run(1, record=False))
    _settle(viewer)
    report.threads_before, _ = own_threads(viewer)
    report.rss_mb_before = rss_mb()
    start = time.monotonic()
    asyncio.run(run(waves, record=True))
    report.seconds = time.monotonic() - start
    _settle(viewer)
    deadline = time.monotonic() + 15  # renderer threads of clients that just left finish their last frame
    while own_threads(viewer)[0] > report.threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    (report.threads_after, report.pool_threads_after), report.rss_mb_after = own_threads(viewer), rss_mb()
    report.renderers_after, report.clients_after = viewer.scene.n_renderers, len(viewer.server.get_clients())
    return report


LEAK_KB_PER_CONNECTION = 4.0  # a healthy viewer keeps under 1 KB per connection once warm (traced)


def retained_kb_per_connection(viewer, rounds: int = 2, **load_args) -> list[float]:
    """Per round of `load_test(viewer, **load_args)`: the traced Python allocations (bytes, arrays,
    objects) still alive after the round, in KB per connection. The viewer is warmed by one untraced
    round first. A per-client leak shows in every round; one-off growth (a cache filling) in at most
    one, so `min(...) > LEAK_KB_PER_CONNECTION` is a leak."""
    load_test(viewer, **load_args)
    tracemalloc.start()
    try:
        out = []
        for _ in range(rounds):
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            report = load_test(viewer, **load_args)
            gc.collect()
            out.append((tracemalloc.get_traced_memory()[0] - before) / 1024 / report.connections)
        return out
    finally:
        tracemalloc.stop()


def traversal_statuses(host: str, port: int) -> dict[str, tuple[int, bool]]:
    """HTTP status of each `TRAVERSALS` request and whether the body looked like /etc/passwd."""
    out = {}
    for path in TRAVERSALS:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.putrequest("GET", path, skip_accept_encoding=True)
            conn.endheaders()
            response = conn.getresponse()
            out[path] = (response.status, b"root:" in response.read())
        finally:
            conn.close()
    return out
