"""The explorer in a real browser: JupyterLab on 127.0.0.1, a notebook that builds the explorer on a small run
directory, driven by Playwright with Debian's Chromium (no browser download).

Run all cells -> the explorer's widgets render (three dropdowns and a line view) -> choose another task in the task
dropdown -> the view shows that task's programs. Screenshots go to the test's tmp dir and a copy of the last one to
``runs/explorer-browser.png``. Skips, saying why, without Chromium, Playwright or JupyterLab
(``.ci/run`` installs them when it can: ``apt-get install chromium``, ``pip install -e ".[browser]"``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = int(float(os.environ.get("PRMLAB_BROWSER_TIMEOUT_S", 240)) * 1000)  # kernel start, torch, PRM load

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def requirements_missing() -> str | None:
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


def notebook(run_dir: Path) -> dict:
    cells = ["import torch\ntorch.set_num_threads(1)",
             f"from prmlab.explorer import explorer\nRUN_DIR = {str(run_dir)!r}",
             "explorer(RUN_DIR)"]
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                       "source": src} for i, src in enumerate(cells)],
            "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def start_jupyterlab(root: Path, port: int) -> subprocess.Popen:
    home = root / "jupyter"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "IPYTHONDIR": str(home / "ipython"), "JUPYTER_PLATFORM_DIRS": "1", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    cmd = [str(Path(sys.executable).parent / "jupyter-lab"), "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--port-retries=0", "--allow-root", "--ServerApp.terminals_enabled=False",
           "--LabApp.extension_manager=readonly", f"--ServerApp.root_dir={root}", "--IdentityProvider.token=", "--ServerApp.password=",
           "--ServerApp.disable_check_xsrf=True", "--LabApp.news_url=None",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           f"--LabApp.user_settings_dir={home / 'settings'}", f"--LabApp.workspaces_dir={home / 'workspaces'}"]
    news = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text(json.dumps({"fetchNews": "false"}))  # no "official Jupyter news?" toast over the screenshot
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text(json.dumps({"autoStartDefaultKernel": True}))  # never the "Select Kernel" dialog
    log = open(root / "jupyterlab.log", "w")
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


def wait_for_kernel(url: str, timeout_s: float) -> None:
    """Until the notebook's session has a kernel that is idle (the page opened it; clicking Run All earlier races
    the session's start)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "api/sessions", timeout=5) as r:
                sessions = json.loads(r.read())
            if any((s.get("kernel") or {}).get("execution_state") == "idle" for s in sessions):
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"no idle kernel for the notebook within {timeout_s} s")


def run_all_cells(page, tries: int = 6) -> None:
    """Run > Run All Cells, again until the first cell has started: a click before the kernel is connected is lost
    (the execution indicator reads idle both before and after connecting)."""
    first_prompt = page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputPrompt")
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
            if any(c in first_prompt.inner_text() for c in "*0123456789"):
                return
            time.sleep(0.5)
    raise AssertionError("the notebook's cells never started running (kernel not connected?)")


def stop(proc: subprocess.Popen) -> None:
    """Stop the JupyterLab this test started (its own session: the server and its kernels)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def test_explorer_renders_and_follows_the_task_dropdown_in_chromium(tmp_path):
    missing = requirements_missing()
    if missing:
        pytest.skip(f"browser test skipped: {missing}")
    from playwright.sync_api import sync_playwright

    import torch

    from prmlab.explorer import write_demo_run

    torch.set_num_threads(1)
    run_dir = write_demo_run(tmp_path / "run", n_tasks=2, n_samples=3)
    (tmp_path / "explorer.ipynb").write_text(json.dumps(notebook(run_dir)), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    proc = start_jupyterlab(tmp_path, port)
    shots = []
    try:
        wait_for_server(proc, url, tmp_path / "jupyterlab.log")
        with sync_playwright() as pw:
            # a fresh --user-data-dir: Playwright takes it as the persistent context's directory
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                args=CHROMIUM_FLAGS, viewport={"width": 1400, "height": 1000})
            page = browser.pages[0] if browser.pages else browser.new_page()
            try:
                page.set_default_timeout(TIMEOUT_MS)
                page.goto(url + "lab/tree/explorer.ipynb")
                page.wait_for_selector(".jp-NotebookPanel .jp-Cell")
                wait_for_kernel(url, TIMEOUT_MS / 1000)
                page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", state="attached")
                run_all_cells(page)

                # the widgets rendered: three dropdowns and a line view with scores
                view = page.locator(".prmlab-explorer .prmlab-view .prmlab-explorer-view")
                view.wait_for()
                assert page.locator(".prmlab-explorer select").count() == 3
                task_select = page.locator(".prmlab-task select")
                options = task_select.locator("option").all_text_contents()
                assert len(options) == 4, options  # 2 labelled train tasks + 2 eval tasks of the base model
                first_task = options[0].split()[0]
                assert first_task in view.inner_text()
                assert page.locator(".prmlab-view table.prmlab-lines").count() == 3
                assert page.locator(".prmlab-view .prmlab-outcome").count() == 3
                shots.append(tmp_path / "explorer-1-rendered.png")
                page.screenshot(path=str(shots[-1]), full_page=True)

                # change a control: the last task (a held-out one) -> the view shows it
                last_task = options[-1].split()[0]
                task_select.select_option(index=len(options) - 1)
                page.wait_for_function(
                    "t => { const v = document.querySelector('.prmlab-explorer .prmlab-explorer-summary');"
                    " return v && v.textContent.includes(t); }", arg=last_task)
                assert first_task not in view.inner_text() and "eval" in view.inner_text()
                shots.append(tmp_path / "explorer-2-task-changed.png")
                page.screenshot(path=str(shots[-1]), full_page=True)

                # no errors in any output area
                outputs = " ".join(page.locator(".jp-OutputArea-output").all_inner_texts())
                assert "Traceback" not in outputs and "Error displaying widget" not in outputs, outputs[-2000:]
            except Exception:
                shots.append(tmp_path / "explorer-failure.png")
                page.screenshot(path=str(shots[-1]), full_page=True)
                (ROOT / "runs").mkdir(exist_ok=True)
                shutil.copyfile(shots[-1], ROOT / "runs" / "explorer-browser-failure.png")
                raise
            finally:
                browser.close()
    finally:
        stop(proc)
    assert all(p.stat().st_size > 10_000 for p in shots)
    (ROOT / "runs").mkdir(exist_ok=True)
    shutil.copyfile(shots[-1], ROOT / "runs" / "explorer-browser.png")
