"""report.html in a real browser (headless Chromium via selenium, see tests/browser.py): the page that
``clustersim compare`` writes loads without a console error, every chart image decodes, the decision
columns come first (with the $ per million tokens, the run's $ and its days when the reports carry
them), and sorting orders numbers numerically and names naturally (``pp=2`` before
``pp=16``), and a screenshot of the page can be taken (docs/images/report-html.png was taken the same way,
of the report of the shipped clusters sweep; see docs/comparing-clusters.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import console_errors, start_browser
from test_report_outputs import make_report

from simulator.cli import main

# (pp, step time s): step times whose text order (10.5 < 100.2 < 9.75) is not their numeric order
POINTS = ((2, 9.75), (4, 10.5), (8, 100.2), (16, 12.0), (32, 11.1))
GPUS, USD_PER_GPU_HOUR, TOKENS_PER_STEP = 1024, 2.5, 4.2e6
TRAIN_TOKENS = 1e12  # the run whose $ and days the reports carry (cost.train_tokens)


def _cost(step_s: float) -> dict[str, float]:
    """The cost fields of a report, worked out here from their definitions (docs/design.md): every GPU is paid
    for every second, and the run trains whole steps."""
    steps = -(-TRAIN_TOKENS // TOKENS_PER_STEP)  # ceiling
    return {
        "usd_per_gpu_hour": USD_PER_GPU_HOUR,
        "usd_per_million_tokens": USD_PER_GPU_HOUR * GPUS * step_s / 3600 / TOKENS_PER_STEP * 1e6,
        "train_tokens": TRAIN_TOKENS,
        "days": steps * step_s / 86_400,
        "usd": GPUS * steps * step_s / 3600 * USD_PER_GPU_HOUR,
    }


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """(driver with report.html open, the report folder): one browser and one compare run per module."""
    folder = tmp_path_factory.mktemp("html")
    inputs = folder / "reports"
    inputs.mkdir()
    for pp, step in POINTS:
        report = make_report(
            scenario=f"llama3-70b pp={pp}",
            gpus=GPUS,
            step_time_s=step,
            tokens_per_s=TOKENS_PER_STEP / step,
            mfu=0.5 * 9.75 / step,
            fits_memory=pp > 2,
            **_cost(step),
        )
        (inputs / f"pp{pp}.json").write_text(report.model_dump_json())
    out = folder / "out"
    assert main(["compare", str(inputs), "--out", str(out), "--format", "svg,png"]) == 0
    driver = start_browser()
    try:
        driver.get((out / "report.html").as_uri())  # as a user opens it: a local file, no server
        yield driver, out
    finally:
        driver.quit()


def _column(driver: Any, header: str) -> list[str]:
    index = _headers(driver).index(header)
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('table.sortable tbody tr'))"
        ".map(r => r.cells[arguments[0]].textContent.trim())",
        index,
    )


def _headers(driver: Any) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('table.sortable th')).map(th => th.textContent.trim())"
    )


def _click(driver: Any, header: str) -> None:
    index = _headers(driver).index(header)
    driver.execute_script("document.querySelectorAll('table.sortable th')[arguments[0]].click()", index)


def test_page_loads_without_console_errors_and_every_image_decodes(page) -> None:
    driver, out = page
    assert console_errors(driver) == []
    images = driver.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
    )
    assert len(images) == len(list(out.glob("*.svg"))) >= 3, images  # breakdown, throughput/MFU, memory
    broken = [alt for alt, complete, width, height in images if not (complete and width > 0 and height > 0)]
    assert broken == [], f"images that did not load: {broken}"


def test_decision_columns_come_first_with_dollars_and_days(page) -> None:
    driver, _ = page
    assert _headers(driver)[:8] == [
        "scenario", "step_time_s", "tokens_per_s", "mfu", "usd_per_million_tokens", "usd", "days", "fits_memory"
    ]  # fmt: skip
    _click(driver, "scenario")  # pp=2, 4, 8, 16, 32: each row's $ and days as worked out from its step
    for header in ("usd_per_million_tokens", "usd", "days"):
        shown = [float(v.replace(",", "")) for v in _column(driver, header)]
        assert shown == pytest.approx([_cost(step)[header] for _, step in POINTS], rel=1e-3), header


def test_sorting_is_numeric_for_numbers_and_natural_for_names(page) -> None:
    driver, _ = page
    _click(driver, "step_time_s")
    assert [float(v) for v in _column(driver, "step_time_s")] == sorted(step for _, step in POINTS)
    _click(driver, "step_time_s")  # again: descending
    assert [float(v) for v in _column(driver, "step_time_s")] == sorted((s for _, s in POINTS), reverse=True)
    _click(driver, "scenario")
    assert _column(driver, "scenario") == [f"llama3-70b pp={pp}" for pp, _ in POINTS]  # 2, 4, 8, 16, 32
    _click(driver, "mfu")  # percentages sort by their value, not their text
    shown = [float(v.rstrip("%")) for v in _column(driver, "mfu")]
    assert shown == sorted(shown)
    assert console_errors(driver) == []


def test_screenshot_for_the_docs(page, tmp_path: Path) -> None:
    driver, _ = page
    driver.set_window_size(1400, 1000)
    shot = tmp_path / "report-html.png"
    assert driver.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
