"""The $ and days of a run in the report, the batch's results.csv and compare's comparison.csv and report.html
(issue #10, point 1): $ per million tokens from the step at the scenario's ``cost.usd_per_gpu_hour``, and the
run's days and $ when ``cost.train_tokens`` says how many tokens it trains. The expected figures are worked
out here from the definitions (every GPU paid for every second; a run trains whole steps), not read back
from the code that writes them."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.cli import main

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "scenarios" / "quickstart.yaml"


def _run_json(capsys: pytest.CaptureFixture[str], *sets: str) -> dict[str, Any]:
    args = ["run", str(QUICKSTART), "--json"]
    for s in sets:
        args += ["--set", s]
    assert main(args) == 0
    return json.loads(capsys.readouterr().out)


def _expected(report: dict[str, Any], price: float, train_tokens: float) -> dict[str, float]:
    tokens_per_step = report["layout"]["global_batch"] * report["layout"]["seq_len"]
    steps = math.ceil(train_tokens / tokens_per_step)
    hours = steps * report["step_time_s"] / 3600
    usd_per_step = price * report["gpus"] * report["step_time_s"] / 3600
    return {
        "usd_per_million_tokens": usd_per_step / tokens_per_step * 1e6,
        "days": hours / 24,
        "usd": report["gpus"] * hours * price,
    }


def test_run_reports_dollars_and_days_of_the_run_it_is_told(capsys: pytest.CaptureFixture[str]) -> None:
    report = _run_json(capsys, "cost.usd_per_gpu_hour=3", "cost.train_tokens=15T")
    assert report["usd_per_gpu_hour"] == 3.0 and report["train_tokens"] == 15e12
    for key, value in _expected(report, 3.0, 15e12).items():
        assert report[key] == pytest.approx(value, rel=1e-12), key
    # the quickstart's 64 × 8,192 = 524,288 tokens per step: 15T / 524,288 = 28,610,229.49, so 28,610,230
    # whole steps (the last one is paid in full)
    assert report["days"] * 86_400 / report["step_time_s"] == pytest.approx(28_610_230, rel=1e-12)


def test_without_train_tokens_only_the_price_per_token_is_known(capsys: pytest.CaptureFixture[str]) -> None:
    report = _run_json(capsys)
    assert report["usd_per_gpu_hour"] == 2.5  # the schema's default price
    assert report["usd_per_million_tokens"] == pytest.approx(
        2.5 * report["gpus"] / 3600 / report["tokens_per_s"] * 1e6, rel=1e-12
    )
    assert (report["train_tokens"], report["days"], report["usd"]) == (None, None, None)


@pytest.mark.parametrize(
    ("value", "words"),
    [("0", "greater than 0"), ("-5", "greater than 0"), ("2e18", "less than or equal"), ("many", "valid number"),
     ("xT", "not a token count"), (".inf", "finite")],
)  # fmt: skip
def test_a_bad_train_tokens_is_one_line_naming_the_field(
    capsys: pytest.CaptureFixture[str], value: str, words: str
) -> None:
    assert main(["run", str(QUICKSTART), "--set", f"cost.train_tokens={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "cost.train_tokens" in err and words in err, err


def test_batch_and_compare_tables_carry_dollars_and_days(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep.yaml"
    base = yaml.safe_load(QUICKSTART.read_text())
    base["cluster"]["topology"] = str(REPO / "topologies" / "dgx-h100.yaml")
    base["cost"] = {"train_tokens": 1e12}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    sweep.write_text(yaml.safe_dump({"base": "base.yaml", "axes": {"cost.usd_per_gpu_hour": [2.0, 4.0]}}))
    out = tmp_path / "batch"
    assert main(["batch", str(sweep), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    for row in rows:
        report = json.loads((out / "reports" / f"{row['label']}.json").read_text())
        price = float(row["cost.usd_per_gpu_hour"])
        for key, value in _expected(report, price, 1e12).items():
            assert float(row[key]) == pytest.approx(value, rel=1e-12), key
    cheap, dear = sorted(rows, key=lambda r: float(r["cost.usd_per_gpu_hour"]))
    # the same step at twice the price
    assert float(dear["usd"]) == pytest.approx(2 * float(cheap["usd"]), rel=1e-12)
    assert dear["days"] == cheap["days"]

    compared = tmp_path / "compare"
    assert main(["compare", str(out), "--out", str(compared), "--format", "svg"]) == 0
    with (compared / "comparison.csv").open() as f:
        table = {r["scenario"]: r for r in csv.DictReader(f)}
    assert sorted(float(r["usd"]) for r in table.values()) == sorted(float(r["usd"]) for r in rows)
    page = (compared / "report.html").read_text(encoding="utf-8")
    headers = page.split("<thead>", 1)[1].split("</thead>", 1)[0]
    order = [h.split(">", 1)[1] for h in headers.split("</th>")[:-1]]
    assert order[order.index("mfu") + 1 : order.index("mfu") + 4] == ["usd_per_million_tokens", "usd", "days"]
