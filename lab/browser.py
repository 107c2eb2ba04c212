"""Drive a headless Chromium over the DevTools protocol: load a viewer page, wait until the WebGL
canvas has drawn and the GUI shows given words, take screenshots. Used by the browser test and to
make the README screenshots; needs a `chromium` binary (Debian: `apt-get install chromium`).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import websockets

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader", "--disable-quic",
                  "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage", "--mute-audio")


def find_chromium() -> str | None:
    return next((p for name in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(name))), None)


class HeadlessBrowser:
    """One headless Chromium process with one page, driven through its DevTools websocket."""

    def __init__(self, width: int = 1280, height: int = 800, binary: str | None = None, start_timeout: float = 60):
        binary = binary or find_chromium()
        if binary is None:
            raise FileNotFoundError("no chromium binary on PATH (Debian: apt-get install chromium)")
        # chromium helper processes may still be writing the profile as it is removed: ignore that
        self._profile = tempfile.TemporaryDirectory(prefix="viewer-chromium-", ignore_cleanup_errors=True)
        self.process = subprocess.Popen(
            [binary, *CHROMIUM_FLAGS, f"--window-size={width},{height}", "--remote-debugging-port=0",
             f"--user-data-dir={self._profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._ids = itertools.count(1)
        try:
            port = self._wait_for_port(Path(self._profile.name) / "DevToolsActivePort", start_timeout)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:  # noqa: S310
                pages = [t for t in json.load(r) if t["type"] == "page"]
            self._ws_url = pages[0]["webSocketDebuggerUrl"]
            self._loop = asyncio.new_event_loop()
            self._ws = self._loop.run_until_complete(websockets.connect(self._ws_url, max_size=None))
        except BaseException:
            self.close()
            raise

    def _wait_for_port(self, file: Path, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with code {self.process.returncode}")
            if file.is_file() and (text := file.read_text().split()):
                return int(text[0])
            time.sleep(0.1)
        raise TimeoutError("chromium did not open its DevTools port")

    def call(self, method: str, **params) -> dict:
        """One DevTools command; returns its result (events arriving meanwhile are skipped)."""
        async def roundtrip() -> dict:
            msg_id = next(self._ids)
            await self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
            while True:
                reply = json.loads(await asyncio.wait_for(self._ws.recv(), timeout=60))
                if reply.get("id") == msg_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]

        return self._loop.run_until_complete(roundtrip())

    def goto(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def evaluate(self, expression: str, await_promise: bool = False):
        """The value of a JavaScript expression (of the promise it returns, with `await_promise`)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        return result["result"].get("value")

    def text(self) -> str:
        """The page's visible text (the GUI panel's titles, labels and markdown)."""
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def dom(self) -> str:
        return self.evaluate("document.documentElement.outerHTML") or ""

    def screenshot(self) -> np.ndarray:
        """The viewport as uint8 [H,W,3]."""
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return iio.imread(data, extension=".png")[..., :3]

    def wait_for(self, words: tuple[str, ...] = (), min_std: float = 0.0, region=None, timeout: float = 60,
                 predicate=None) -> np.ndarray:
        """Screenshot once a canvas exists, every word is in the page text, `predicate()` holds, the
        screenshot's `region` (slices) has pixel standard deviation above `min_std`, and two
        screenshots half a second apart agree."""
        deadline = time.monotonic() + timeout
        while True:
            ready = bool(self.evaluate("!!document.querySelector('canvas')"))
            text = self.text() if ready else ""
            ready = ready and all(w in text for w in words) and (predicate is None or predicate())
            shot = self.screenshot() if ready else None
            if shot is not None and shot[region or ...].std() > min_std:
                time.sleep(0.5)  # and it has stopped changing (fades, late frames)
                again = self.screenshot()
                if again.shape == shot.shape and np.abs(again.astype(float) - shot).mean() < 0.5:
                    return again
            if time.monotonic() > deadline:
                missing = [w for w in words if w not in text]
                raise TimeoutError(f"page not ready: missing words {missing}, "
                                   f"std {None if shot is None else float(shot[region or ...].std())}")
            time.sleep(0.5)

    def close(self) -> None:
        if getattr(self, "_ws", None) is not None:
            self._loop.run_until_complete(self._ws.close())
            self._ws = None
        if getattr(self, "_loop", None) is not None:
            self._loop.close()
            self._loop = None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._profile.cleanup()

    def __enter__(self) -> HeadlessBrowser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
