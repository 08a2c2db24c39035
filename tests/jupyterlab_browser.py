"""JupyterLab in a real browser, for the browser tests (test_explorer_browser.py, test_notebooks_browser.py).

A JupyterLab server on 127.0.0.1 with its own settings (no token, no news, no kernel dialog), driven by the
``playwright`` package with Debian's Chromium (``/usr/bin/chromium``; Playwright downloads no browser):

    with jupyterlab(root, home) as url, chromium_page(profile) as page:
        open_notebook(page, url, "00_tour.ipynb")
        run_all_cells(page)
        wait_until_finished(page, url, "00_tour.ipynb", timeout_s)
        page_problems(page)        # error/stderr outputs, "Traceback", "Error displaying widget", blank widgets

The notebook's page is read with ``textContent`` (not ``innerText``): JupyterLab's default windowing mode skips the
layout of cells outside the viewport, and ``innerText`` of a skipped cell is empty.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KERNEL_TIMEOUT_S = float(os.environ.get("PRMLAB_BROWSER_TIMEOUT_S", "240"))  # server, kernel start, one UI action
STDERR_MIME = "application/vnd.jupyter.stderr"  # JupyterLab renders stderr streams and errors with this type
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
EXECUTED = re.compile(r"\[\d+\]")  # an input prompt "[12]:"; "[*]:" is queued or running, "[ ]:" never ran


def requirements_missing() -> str | None:
    """Why a browser test cannot run here (None when it can)."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (Debian: apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return 'the playwright package is missing (pip install -e ".[browser]")'
    if not (Path(sys.executable).parent / "jupyter-lab").exists():
        return 'JupyterLab is missing (pip install -e ".[notebooks]")'
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(home: Path) -> None:
    """User settings a learner would click through once: no news toast over the screenshots, a notebook opens with
    its default kernel (no "Select Kernel" dialog)."""
    settings = home / "settings" / "@jupyterlab"
    for rel, value in (("apputils-extension/notification.jupyterlab-settings", {"fetchNews": "false"}),
                       ("notebook-extension/tracker.jupyterlab-settings", {"autoStartDefaultKernel": True})):
        (settings / rel).parent.mkdir(parents=True, exist_ok=True)
        (settings / rel).write_text(json.dumps(value))


def start_jupyterlab(root: Path, home: Path, port: int, env: dict | None = None) -> subprocess.Popen:
    """``jupyter lab`` serving ``root`` (as ``jupyter lab notebooks/`` serves notebooks/), its kernels started in
    the notebook's directory; config, runtime and settings under ``home``; log in ``home/jupyterlab.log``."""
    home.mkdir(parents=True, exist_ok=True)
    write_settings(home)
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "IPYTHONDIR": str(home / "ipython"), "JUPYTER_PLATFORM_DIRS": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1", **(env or {})}
    cmd = [str(Path(sys.executable).parent / "jupyter-lab"), "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--port-retries=0", "--allow-root", "--ServerApp.terminals_enabled=False",
           "--LabApp.extension_manager=readonly", f"--ServerApp.root_dir={root}", "--IdentityProvider.token=",
           "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}"]
    with open(home / "jupyterlab.log", "w") as log:  # the server holds its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_for_server(proc: subprocess.Popen, url: str, log: Path, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "api/status", timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not answer within {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen) -> None:
    """Stop the JupyterLab this test started (its own process group: the server and its kernels)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextmanager
def jupyterlab(root: Path, home: Path, env: dict | None = None) -> Iterator[str]:
    """A running JupyterLab serving ``root``; yields its URL (ending in "/") and stops it on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = start_jupyterlab(root, home, port, env)
    try:
        wait_for_server(proc, url, home / "jupyterlab.log")
        yield url
    finally:
        stop(proc)


@contextmanager
def chromium_page(profile_dir: Path, width: int = 1400, height: int = 1000):
    """A Playwright page in headless Chromium with a fresh profile (Playwright's persistent-context directory)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch_persistent_context(
            str(profile_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
            viewport={"width": width, "height": height})
        try:
            page = browser.pages[0] if browser.pages else browser.new_page()
            page.set_default_timeout(KERNEL_TIMEOUT_S * 1000)
            yield page
        finally:
            browser.close()


def api(url: str, path: str, method: str = "GET"):
    with urllib.request.urlopen(urllib.request.Request(url + path, method=method), timeout=10) as r:
        body = r.read()
    return json.loads(body) if body else None


def kernel_state(url: str, notebook: str) -> str | None:
    """The execution state ("idle", "busy", "starting") of the kernel of the session of ``notebook`` (a path
    relative to the server's root), None without one."""
    try:
        sessions = api(url, "api/sessions")
    except OSError:
        return None
    return next(((s.get("kernel") or {}).get("execution_state") for s in sessions if s.get("path") == notebook), None)


def wait_for_kernel(url: str, notebook: str, timeout_s: float = KERNEL_TIMEOUT_S) -> None:
    """Until the notebook's session has an idle kernel (the page opened it; clicking Run All earlier races the
    session's start)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if kernel_state(url, notebook) == "idle":
            return
        time.sleep(0.5)
    raise AssertionError(f"no idle kernel for {notebook} within {timeout_s} s")


def shutdown_sessions(url: str) -> None:
    """End every session and its kernel (one notebook's model and sandbox at a time on a small machine)."""
    for s in api(url, "api/sessions"):
        api(url, f"api/sessions/{s['id']}", method="DELETE")


def open_notebook(page, url: str, notebook: str) -> None:
    """Open ``notebook`` alone (``?reset``: no tab restored from an earlier notebook) and wait for its kernel."""
    page.goto(url + f"lab/tree/{notebook}?reset")
    page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
    wait_for_kernel(url, notebook)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached")


def code_prompts(page) -> list[str]:
    """The input prompts of the code cells, in order ("[3]:", "[*]:", "[ ]:")."""
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputPrompt").evaluate_all(
        "els => els.map(e => e.textContent.trim())")


def run_all_cells(page, tries: int = 6) -> None:
    """Run > Run All Cells, again until the first CODE cell has started: a click before the kernel is connected is
    lost (the execution indicator reads idle both before and after connecting). The first cell may be markdown,
    whose prompt never changes."""
    accept = page.locator(".jp-Dialog .jp-mod-accept")  # "Select Kernel" when clicked before the session exists
    for _ in range(tries):
        if accept.is_visible():
            accept.click()
        try:
            page.click(".lm-MenuBar-item:has-text('Run')", timeout=10_000)
            page.click(".lm-Menu-item:has-text('Run All Cells')", timeout=10_000)
        except Exception:  # noqa: BLE001  a dialog came up in between: accept it and try again
            page.keyboard.press("Escape")
            continue
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if accept.is_visible():
                accept.click()
            prompts = code_prompts(page)
            if prompts and ("*" in prompts[0] or EXECUTED.search(prompts[0])):
                return
            time.sleep(0.5)
    raise AssertionError("the notebook's cells never started running (kernel not connected?)")


def wait_until_finished(page, url: str, notebook: str, timeout_s: float, poll_s: float = 2.0) -> list[str]:
    """Wait until Run All is over: no cell queued or running, the kernel idle, twice in a row ``poll_s`` apart.
    Returns the code cells' prompts; a cell that raised stops Run All, so the later ones stay "[ ]:"."""
    deadline = time.monotonic() + timeout_s
    calm = 0
    while time.monotonic() < deadline:
        prompts = code_prompts(page)
        busy = any("*" in p for p in prompts) or kernel_state(url, notebook) != "idle"
        calm = 0 if busy else calm + 1
        if calm >= 2:
            return prompts
        time.sleep(poll_s)
    raise AssertionError(f"{notebook}: Run All not finished after {timeout_s:.0f} s; prompts {code_prompts(page)}")


def page_problems(page) -> list[str]:
    """What a learner would see as wrong in the open notebook: error or stderr outputs (warnings), a "Traceback"
    or "Error displaying widget" anywhere in the outputs, a widget output that rendered no widget, a dialog."""
    panel = ".jp-NotebookPanel:not(.lm-mod-hidden)"
    problems = [f"stderr/error output: {t.strip()[:400]}" for t in page.locator(
        f"{panel} .jp-OutputArea-output[data-mime-type='{STDERR_MIME}']").evaluate_all(
        "els => els.map(e => e.textContent)")]
    outputs = " ".join(page.locator(f"{panel} .jp-OutputArea-output").evaluate_all(
        "els => els.map(e => e.textContent)"))
    problems += [f"{s!r} in the outputs" for s in ("Traceback", "Error displaying widget") if s in outputs]
    blank = page.locator(f"{panel} .jp-OutputArea-output[data-mime-type='{WIDGET_MIME}']").evaluate_all(
        "els => els.filter(e => !e.querySelector('.jupyter-widgets')).length")
    if blank:
        problems.append(f"{blank} widget output(s) rendered no widget")
    problems += [f"dialog: {t.strip()[:300]}" for t in page.locator(".jp-Dialog").all_text_contents()]
    return problems


def rendered(page, mime: str, content: str) -> int:
    """How many outputs of type ``mime`` in the open notebook hold a ``content`` element (an ``img`` for a picture,
    ``.jupyter-widgets`` for a widget view)."""
    return page.locator(f".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output[data-mime-type='{mime}']"
                        ).evaluate_all(f"els => els.filter(e => e.querySelector({content!r})).length")


def screenshot_whole_notebook(page, path: Path, max_height: int = 20_000) -> None:
    """A screenshot of the whole notebook from its top: the viewport grows to the notebook's scroll height
    (capped), so every cell is laid out and visible at once."""
    outer = "document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')"
    height = page.evaluate(f"() => {{ const s = {outer}; return s ? s.scrollHeight : 0; }}")
    size = page.viewport_size
    page.set_viewport_size({"width": size["width"], "height": min(max_height, max(size["height"], height + 200))})
    page.evaluate(f"() => {{ const s = {outer}; if (s) s.scrollTop = 0; }}")
    page.wait_for_timeout(2000)
    page.screenshot(path=str(path))
    page.set_viewport_size(size)


def save_notebook(page, path: Path, n_code: int, timeout_s: float = 60) -> dict:
    """Save the open notebook (Ctrl+S, as a learner would) and read it back from ``path`` once all ``n_code`` code
    cells have an execution count on disk."""
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").first.click(position={"x": 5, "y": 5})
    page.keyboard.press("Escape")  # command mode: Ctrl+S saves the notebook, not the browser page
    page.keyboard.press("Control+s")
    deadline = time.monotonic() + timeout_s
    while True:
        nb = json.loads(path.read_text(encoding="utf-8"))
        counts = [c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code"]
        if len(counts) == n_code and all(counts):
            return nb
        if time.monotonic() > deadline:
            raise AssertionError(f"{path.name} was not saved with its outputs within {timeout_s} s: counts {counts}")
        time.sleep(1)
