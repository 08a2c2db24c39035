"""Notebooks 00-02 as a learner runs them: the README's ``jupyter lab notebooks/`` on a copy of the checkout (its
tracked files, as a fresh clone has them), each notebook opened in turn in Chromium, Run > Run All Cells, wait until
every code cell ran and the kernel is idle, then no error or stderr output (warnings), no "Traceback", no "Error
displaying widget", every picture and widget rendered.

The notebooks find the copy's ``runs/tiny`` as they find the repository's (``RUN_DIR = ""``), so nothing is written
into this checkout; the checkout's notebooks are checked to be unchanged. When tests/test_notebooks.py ran first in
the same session, its run directory (the ``notebook_runs`` fixture) is copied in as the copy's ``runs/tiny``: Run All
then reuses the labels and PRMs that those headless runs computed (as after ``prmlab pipeline``) and the test stays
short; alone, the notebooks compute everything from scratch (several minutes each on a shared 2-core machine).

Screenshots of the finished notebooks, the saved executed notebooks and the wall times go to
``runs/notebooks-browser/``. ``PRMLAB_NOTEBOOK_BROWSER_TIMEOUT_S`` (default 1800) bounds each notebook's Run All.
Skips, saying why, without Chromium, Playwright or JupyterLab (``.ci/run`` installs them when it can).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import jupyterlab_browser as jl
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ["00_tour.ipynb", "01_labelling.ipynb", "02_prm.ipynb"]
PRESET = "tiny"  # the notebooks' default PROFILE
RUN_TIMEOUT_S = float(os.environ.get("PRMLAB_NOTEBOOK_BROWSER_TIMEOUT_S", "1800"))
OUT = ROOT / "runs" / "notebooks-browser"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def copy_checkout(dest: Path) -> Path:
    """The checkout's tracked files, as they are in the working tree (a fresh clone plus uncommitted edits)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def digests(paths) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


@pytest.fixture(scope="module")
def lab(tmp_path_factory, notebook_runs):
    """A copy of the checkout served by JupyterLab with root ``notebooks/``, and a Chromium page on it."""
    missing = jl.requirements_missing()
    if missing:
        pytest.skip(f"browser test skipped: {missing}")
    tmp = tmp_path_factory.mktemp("notebooks-browser")
    clone = copy_checkout(tmp / "clone")
    if (notebook_runs / "labels.jsonl").exists():  # the headless notebook tests ran first in this session
        shutil.copytree(notebook_runs, clone / "runs" / PRESET, symlinks=True)
    before = digests(ROOT / "notebooks" / n for n in NOTEBOOKS)
    OUT.mkdir(parents=True, exist_ok=True)
    with jl.jupyterlab(clone / "notebooks", tmp / "jupyter") as url, jl.chromium_page(tmp / "chromium-profile") as page:
        yield {"page": page, "url": url, "clone": clone, "before": before, "times": {}}
    shutil.copyfile(tmp / "jupyter" / "jupyterlab.log", OUT / "jupyterlab.log")


@pytest.mark.parametrize("name", NOTEBOOKS, ids=lambda n: n.split(".")[0])
def test_run_all_in_jupyterlab_shows_no_error_warning_or_broken_widget(lab, name):
    page, url, path = lab["page"], lab["url"], lab["clone"] / "notebooks" / name
    n_code = sum(c["cell_type"] == "code" for c in json.loads(path.read_text(encoding="utf-8"))["cells"])
    try:
        jl.open_notebook(page, url, name)
        start = time.perf_counter()
        jl.run_all_cells(page)
        prompts = jl.wait_until_finished(page, url, name, RUN_TIMEOUT_S)
        wall = time.perf_counter() - start
        lab["times"][name] = round(wall, 1)
        print(f"{name}: Run All took {wall:.0f} s in JupyterLab")
        (OUT / "times.json").write_text(json.dumps(lab["times"], indent=1) + "\n")
        jl.screenshot_whole_notebook(page, OUT / f"{path.stem}.png")

        assert len(prompts) == n_code and all(jl.EXECUTED.search(p) for p in prompts), \
            f"{name}: not every code cell ran (a cell raised?): {prompts}; {jl.page_problems(page)}"
        assert jl.page_problems(page) == []

        saved = jl.save_notebook(page, path, n_code)
        shutil.copyfile(path, OUT / name)
        outputs = [o for c in saved["cells"] for o in c.get("outputs", [])]
        assert not [o for o in outputs if o["output_type"] == "error"]
        assert not [o["text"] for o in outputs if o["output_type"] == "stream" and o["name"] == "stderr"]
        data = [o.get("data", {}) for o in outputs]
        assert jl.rendered(page, "image/png", "img") == sum("image/png" in d for d in data), "every picture is shown"
        assert jl.rendered(page, jl.WIDGET_MIME, ".jupyter-widgets") == sum(jl.WIDGET_MIME in d for d in data), \
            "every widget is shown"
    except Exception:
        page.screenshot(path=str(OUT / f"{path.stem}-failure.png"))
        raise
    finally:
        jl.shutdown_sessions(url)


def test_the_notebooks_wrote_into_the_copy_and_left_the_checkout_alone(lab):
    assert (lab["clone"] / "runs" / PRESET / "labels.jsonl").exists(), "the notebooks found the copy's runs/tiny"
    assert not (lab["clone"] / "notebooks" / "runs").exists(), "nothing written next to the notebooks"
    assert digests(ROOT / "notebooks" / n for n in NOTEBOOKS) == lab["before"], "the checkout's notebooks unchanged"
