"""The shipped catalogs (GPUs, link types, models), parameter counts and packaged validation data.

Published totals the parameter counts must reproduce within 3 %: GPT-3 175B (Brown et al. 2020, Table 2.1),
Llama 3 8B / 70B / 405B (8.03B, 70.6B, 405B: Meta model cards and Dubey et al. 2024), Mixtral 8x7B (46.7B
total, 12.9B active: Jiang et al. 2024), and the params_b column of Narayanan et al. 2021, Table 1.
"""

from __future__ import annotations

from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import yaml

from simulator.hardware.gpu import PRECISIONS, gpu_catalog
from simulator.models.catalog import model_catalog
from simulator.models.params import parameter_count
from simulator.models.spec import ModelSpec
from simulator.scenario import ModelConfig

SHARED_VALIDATION = Path("/work/shared/validation")
SHARED_FILES = (
    "megatron-2021-a100.yaml",
    "megatron-readme-h100.yaml",
    "korthikanti-2022-layer.yaml",
    "nccl-busbw.yaml",
    "modern-training-runs.yaml",
)
GPUS = ("v100-sxm2-16gb", "v100-sxm2-32gb", "a100-sxm-40gb", "a100-sxm-80gb", "h100-sxm", "h200-sxm", "b200", "h800-sxm",
        "h100-96gb-hbm2e", "gb200")
LINKS = (
    "nvlink2",
    "nvlink3",
    "nvlink4",
    "nvlink5",
    "pcie3",
    "pcie4",
    "pcie5",
    "ib-edr",
    "ib-hdr",
    "ib-ndr",
    "ib-xdr",
    "roce-400g",
    "ici",
)


def _data_dir() -> Any:
    return resources.files("simulator.validation").joinpath("data")


def _validation_files() -> list[str]:
    return sorted(p.name for p in _data_dir().iterdir() if p.name.endswith(".yaml"))


def _spec(name: str) -> ModelSpec:
    return ModelConfig.model_validate({"name": name, **model_catalog()[name]}).to_spec()


def _links() -> dict[str, Any]:
    text = resources.files("simulator.hardware").joinpath("links.yaml").read_text()
    doc: dict[str, Any] = yaml.safe_load(text)
    return doc


def _close(value: float, published: float, tol: float = 0.03) -> bool:
    return abs(value / published - 1.0) <= tol


# ------------------------------------------------------------------------------------------------ GPUs
def test_every_gpu_loads_with_positive_dense_peaks() -> None:
    cat = gpu_catalog()
    assert set(GPUS) <= set(cat)
    for name, gpu in cat.items():
        assert set(gpu.peak_flops_per_s) <= set(PRECISIONS), name
        assert all(v > 0 for v in gpu.peak_flops_per_s.values()), name
        assert gpu.hbm_bytes > 0 and gpu.hbm_bytes_per_s > 0 and gpu.sm_count > 0 and gpu.tdp_w > 0
        assert gpu.sources, f"{name} names no source"


def test_gpu_datasheet_figures() -> None:
    cat = gpu_catalog()
    # V100: fp16 tensor 125 TFLOP/s, no bf16; NVLink 300 GB/s bidirectional = 150 GB/s per direction.
    assert cat["v100-sxm2-32gb"].peak("fp16") == pytest.approx(125e12)
    assert "bf16" not in cat["v100-sxm2-16gb"].peak_flops_per_s
    assert cat["v100-sxm2-16gb"].nvlink_bytes_per_s == pytest.approx(150e9)
    assert cat["a100-sxm-40gb"].hbm_bytes_per_s == pytest.approx(1555e9)
    assert cat["h200-sxm"].peak("bf16") == pytest.approx(cat["h100-sxm"].peak("bf16"))
    assert cat["b200"].peak("bf16") == pytest.approx(2250e12)  # dense, half the 4.5 PF sparse figure
    assert cat["b200"].nvlink_bytes_per_s == pytest.approx(900e9)


def test_current_gpu_datasheet_figures() -> None:
    """Issue #8 point 3: dense (not sparse) datasheet peaks of the 2023-2025 GPUs, per GPU."""
    cat = gpu_catalog()
    h100, h800, gb200, b200 = cat["h100-sxm"], cat["h800-sxm"], cat["gb200"], cat["b200"]
    # H800: the H100's compute and HBM3, NVLink 400 GB/s bidirectional (8 links) = 200 GB/s per direction
    assert h800.peak_flops_per_s == h100.peak_flops_per_s and h800.hbm_bytes_per_s == h100.hbm_bytes_per_s
    assert h800.nvlink_bytes_per_s == pytest.approx(200e9)
    assert b200.peak("fp8") == pytest.approx(4500e12) and b200.peak("fp4") == pytest.approx(9000e12)
    # GB200 NVL72: 360 PF BF16 / 720 PF FP8 sparse per 72 GPUs -> 2.5 / 5 PF dense per GPU; NVLink5 1.8 TB/s
    assert gb200.peak("bf16") == pytest.approx(360e15 / 72 / 2)
    assert gb200.peak("fp8") == pytest.approx(720e15 / 72 / 2)
    assert gb200.nvlink_bytes_per_s == pytest.approx(900e9) and gb200.hbm_bytes_per_s == pytest.approx(8e12)
    assert cat["h100-96gb-hbm2e"].hbm_bytes_per_s == pytest.approx(2.4e12)  # torchtitan's Grand Teton H100
    assert (h100.sm_count, h800.sm_count, cat["h200-sxm"].sm_count, b200.sm_count) == (132, 132, 132, 148)


def test_new_gpus_have_a_calibration_profile_that_says_it_is_inherited() -> None:
    from simulator.hardware.calibration import compute_calibration

    for gpu in ("h800-sxm", "h100-96gb-hbm2e", "h200-sxm"):
        assert compute_calibration(gpu).inherited_from == "h100-sxm", gpu
    # B200: GEMM constants transferred from the H100's fit through kernel tables (calibrate transfer); GB200 its
    b200 = compute_calibration("b200")
    assert b200.inherited_from is None and b200.transferred_from == "h100-sxm"
    assert compute_calibration("gb200").inherited_from == "b200"


@pytest.mark.parametrize(
    ("name", "gpu", "per_host", "nvlink_gbps"),
    [("dgx-h800", "h800-sxm", 8, 200), ("dgx-b200", "b200", 8, 900), ("gb200-nvl72", "gb200", 72, 900),
     ("grand-teton-h100", "h100-96gb-hbm2e", 8, 450)],
)
def test_current_topologies_load(name: str, gpu: str, per_host: int, nvlink_gbps: float) -> None:
    from simulator.topology.loader import build_cluster

    folder = Path(__file__).resolve().parents[1] / "topologies"
    doc = yaml.safe_load((folder / f"{name}.yaml").read_text())
    assert doc["source"] and doc["host"]["gpu"] == gpu and doc["host"]["nvlink_gbps"] == nvlink_gbps
    doc["nodes"] = 2
    cluster = build_cluster(doc, file=name)
    assert cluster.meta["gpus_per_host"] == per_host and cluster.meta["hosts"] == 2


# ----------------------------------------------------------------------------------------------- links
def test_every_link_type_has_bandwidth_latency_and_source() -> None:
    links = _links()["links"]
    assert set(LINKS) <= set(links)
    for name, link in links.items():
        assert link["gbps_per_direction"] > 0, name
        assert link["latency_us"] > 0, name
        assert link["latency_kind"] in {"switch_port_to_port", "nccl_model_per_step", "link_placeholder"}
        assert str(link["source"]).strip(), name


def test_link_bandwidths_match_line_rates() -> None:
    links = _links()["links"]
    assert links["ib-hdr"]["gbps_per_direction"] == 25  # 200 Gb/s
    assert links["ib-ndr"]["gbps_per_direction"] == 50  # 400 Gb/s


def test_nvlink_totals_per_gpu_match_links_and_datasheets() -> None:
    doc = _links()
    cat = gpu_catalog()
    gpu_of = {"v100": "v100-sxm2-16gb", "a100": "a100-sxm-80gb", "h100": "h100-sxm", "b200": "b200"}
    for key, entry in doc["nvlink_per_gpu"].items():
        per_link = doc["links"][entry["link_type"]]["gbps_per_direction"]
        assert entry["links"] * per_link == entry["gbps_per_direction"], key
        assert cat[gpu_of[key]].nvlink_bytes_per_s == pytest.approx(entry["gbps_per_direction"] * 1e9)
        assert entry["source"]


# ---------------------------------------------------------------------------------------------- models
def test_every_model_validates_and_names_a_source() -> None:
    cat = model_catalog()
    assert len(cat) >= 30
    for name in cat:
        spec = _spec(name)
        assert spec.source.strip(), f"{name} names no source"
        assert parameter_count(spec).total > 0


@pytest.mark.parametrize(
    ("name", "published_b"),
    [("gpt3-175b", 175.0), ("llama3-8b", 8.03), ("llama3-70b", 70.6), ("llama3-405b", 405.0)],
)
def test_parameter_count_matches_published_totals(name: str, published_b: float) -> None:
    assert _close(parameter_count(_spec(name)).total / 1e9, published_b)


def test_mixtral_total_and_active() -> None:
    pc = parameter_count(_spec("mixtral-8x7b"))
    assert _close(pc.total / 1e9, 46.7)
    assert _close(pc.active / 1e9, 12.9)
    assert pc.moe_layers == 32 and pc.dense_layers == 0


def test_megatron_sc21_params_column() -> None:
    text = _data_dir().joinpath("megatron-2021-a100.yaml").read_text()
    runs = yaml.safe_load(text)["runs"]
    names = [
        "megatron-1.7b",
        "megatron-3.6b",
        "megatron-7.5b",
        "megatron-18.4b",
        "megatron-39.1b",
        "megatron-76.1b",
        "megatron-145.6b",
        "megatron-310.1b",
        "megatron-529.6b",
        "megatron-1t",
    ]
    assert len(runs) == len(names)
    for name, row in zip(names, runs, strict=True):
        spec = _spec(name)
        assert (spec.layers, spec.hidden, spec.heads) == (row["layers"], row["hidden"], row["heads"])
        # the paper's count includes learned position embeddings for s = 2048
        total = parameter_count(spec, learned_positions=2048).total
        assert _close(total / 1e9, row["params_b"]), name


def test_parameter_count_parts_on_a_small_model() -> None:
    # 2 layers, h 4, 2 heads, 1 kv head (head dim 2), ffn 8, vocab 10, SwiGLU, RMSNorm, untied, no biases.
    spec = ModelSpec(
        name="t",
        layers=2,
        hidden=4,
        heads=2,
        kv_heads=1,
        ffn_hidden=8,
        vocab=10,
        gated_mlp=True,
        linear_bias=False,
    )
    pc = parameter_count(spec)
    assert pc.attention_per_layer == 4 * 4 + 2 * 4 * 2 + 4 * 4  # Q, K, V (2 wide), O
    assert pc.dense_mlp_per_layer == 3 * 4 * 8
    assert pc.norms_per_layer == 2 * 4
    assert pc.embedding == pc.output == 40
    assert pc.total == 40 + 40 + 4 + 2 * (48 + 96 + 8)
    tied = parameter_count(replace(spec, tied_embeddings=True))
    assert tied.total == pc.total - 40


def test_moe_counts_shared_experts_router_and_dense_layers() -> None:
    spec = _spec("deepseek-v3")
    pc = parameter_count(spec)
    assert (pc.dense_layers, pc.moe_layers, pc.experts, pc.top_k) == (3, 58, 256, 8)
    assert pc.expert_params == 3 * 7168 * 2048
    assert pc.shared_experts_per_layer == pc.expert_params
    assert pc.router_per_layer == 7168 * 256
    assert pc.total - pc.active == 58 * (256 - 8) * pc.expert_params


# ---------------------------------------------------------------------------------- validation data
def _names_a_source(doc: dict[str, Any]) -> bool:
    if str(doc.get("source", "")).strip():
        return True
    rows = doc.get("runs") or doc.get("rows") or doc.get("points") or doc.get("cases") or []
    return bool(rows) and all(str(r.get("source", "")).strip() for r in rows)


def test_every_validation_file_parses_and_names_a_source() -> None:
    files = _validation_files()
    assert set(SHARED_FILES) <= set(files)
    assert len(files) >= len(SHARED_FILES) + 4  # held-out published runs
    for name in files:
        doc = yaml.safe_load(_data_dir().joinpath(name).read_text())
        assert isinstance(doc, dict), name
        assert _names_a_source(doc), f"{name} names no source"
        rows = doc.get("runs") or doc.get("rows") or doc.get("points") or doc.get("cases")
        assert rows, f"{name} has no rows"


def test_held_out_runs_state_their_layout() -> None:
    for name in _validation_files():
        if name in SHARED_FILES:
            continue
        doc = yaml.safe_load(_data_dir().joinpath(name).read_text())
        if "cases" in doc:  # modern-training-runs.yaml's format (heldout-training-runs.yaml): one system per case
            for case in doc["cases"]:
                assert {"tp", "pp", "dp", "cp", "ep"} <= set(case["parallelism"]) and case["gpus"], case["id"]
                assert case["source"] and case["source_row"] and case["measured"]["step_time_s"] > 0, case["id"]
            continue
        assert doc.get("gpu") in gpu_catalog(), name
        for row in doc["runs"]:
            assert "tp" in row and "gpus" in row, f"{name}: {row.get('name')}"
            measured = {"tflops_per_gpu", "hardware_tflops_per_gpu", "mfu_percent", "step_time_s"}
            assert measured & set(row), f"{name}: {row.get('name')} has no measured figure"


@pytest.mark.skipif(not SHARED_VALIDATION.is_dir(), reason="shared validation folder not present")
def test_packaged_copies_match_shared_validation() -> None:
    for name in SHARED_FILES:
        packaged = _data_dir().joinpath(name).read_bytes()
        assert packaged == (SHARED_VALIDATION / name).read_bytes(), name
