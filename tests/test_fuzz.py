"""The fuzz suite of issue #12: generated bad and extreme inputs never give a traceback, a hang or a silent
wrong answer.

Six families, each a hypothesis test (``derandomize=True``: the same cases on every run, so a failure
reproduces): mutated fields of a shipped-like scenario, mutated topology files, sweep files, CLI arguments,
raw YAML / file attacks, and random valid scenarios on tiny clusters. Every case goes through the CLI in-process (``simulator.cli.main``) and must end
in one of two ways:

* exit 2 with exactly one stderr line ``clustersim: error: ...`` naming the file (when there is one), no
  traceback and nothing on stdout; or
* exit 0 with strict JSON (no Infinity/NaN) whose invariants hold (``simulate`` checks them on every run and
  would exit 3).

Exit 3 (an invariant broken), any other status or an exception escaping ``main`` fails the case. Hangs are
bounded by the product's own bounds: a valid case is first estimated with ``run --dry-run`` and simulated
only below ``ENGINE_OPS`` ops (bigger ones are checked to the estimate, which is where the engine's refusal
sits); no wall-clock assertion. ``CLUSTERSIM_FUZZ_EXAMPLES=5000`` runs thousands of cases per family
(default: ``DEFAULT_EXAMPLES``, which keeps this file near a minute on 2 busy cores).
"""

from __future__ import annotations

import copy
import json
import os
import string
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulator.batch.runner import check_point
from simulator.batch.sweep import load_points
from simulator.cli import main
from simulator.errors import ScenarioError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_EXAMPLES = {"scenario": 150, "topology": 100, "sweep": 100, "cli": 150, "raw": 150, "valid": 60}
EXAMPLES = int(os.environ.get("CLUSTERSIM_FUZZ_EXAMPLES", "0"))
ENGINE_OPS = 20_000  # a valid case is simulated only below this many ops (a tiny run takes well under 1 s)
COUNTS: Counter[str] = Counter()  # outcome per family, printed at the end (README's "Robustness" figures)


def fuzz_settings(family: str) -> Any:
    return settings(
        max_examples=EXAMPLES or DEFAULT_EXAMPLES[family],
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


# A tiny valid scenario: gpt3-125m on one DGX A100 (8 GPUs), analytical network: a run takes ~0.1 s.
BASE: dict[str, Any] = {
    "model": "gpt3-125m",
    "cluster": {"topology": "dgx-a100", "nodes": 1},
    "training": {"seq_len": 512, "global_batch": 16, "micro_batch": 2},
    "parallelism": {"tp": 2, "pp": 2},
    "network": {"model": "analytical"},
}
INLINE_MODEL = {"layers": 4, "hidden": 256, "heads": 4, "vocab": 1000, "moe": {"experts": 4, "top_k": 2}}
FIELDS: list[tuple[str, ...]] = [
    ("model",), ("model", "layers"), ("model", "hidden"), ("model", "heads"), ("model", "kv_heads"),
    ("model", "ffn_hidden"), ("model", "vocab"), ("model", "head_dim"), ("model", "moe", "experts"),
    ("model", "moe", "top_k"), ("model", "moe", "capacity_factor"), ("model", "moe", "first_dense_layers"),
    ("model", "moe", "every"), ("cluster",), ("cluster", "topology"), ("cluster", "nodes"),
    ("cluster", "overrides"), ("cluster", "overrides", "host"), ("cluster", "overrides", "fabric"),
    ("training", "seq_len"), ("training", "global_batch"), ("training", "micro_batch"),
    ("training", "precision"), ("training", "recompute"), ("training", "expert_load"),
    ("training", "expert_load", "skew"), ("training", "expert_load", "distribution"),
    ("parallelism", "tp"), ("parallelism", "pp"), ("parallelism", "dp"), ("parallelism", "cp"),
    ("parallelism", "ep"), ("parallelism", "zero"), ("parallelism", "schedule"),
    ("parallelism", "virtual_stages"), ("parallelism", "pp_layers"), ("parallelism", "sequence_parallel"),
    ("parallelism", "tp_comm_overlap"), ("parallelism", "grad_bucket_mb"), ("network", "model"),
    ("network", "algorithm"), ("engine", "mode"), ("engine", "seed"), ("cost", "usd_per_gpu_hour"),
    ("cost", "train_tokens"),
    ("name",), ("colour",), ("training", "colour"),
]  # fmt: skip

# Values a mutated field takes: edge numbers, non-finite floats, wrong types, long and odd strings.
SCALARS = st.one_of(
    st.sampled_from([0, 1, 2, 3, 4, 7, 8, 16, 64, -1, -(2**63), 2**63 - 1, 2**64, 10**30, 10**4000]),
    st.sampled_from([0.0, -0.0, 0.5, 1e-300, 5e-324, 1e308, float("inf"), float("-inf"), float("nan")]),
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.sampled_from(["", "bf16", "fp8", "1f1b", "interleaved", "zigzag", "flow", "ring", "dgx-h100", "full"]),
    st.text(alphabet=string.printable + "é\u2028\x00", max_size=40),
    st.just("x" * 5000),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def set_path(doc: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    """A copy of ``doc`` with ``path`` set to ``value`` (mappings created or replaced on the way)."""
    out = copy.deepcopy(doc)
    if path[0] == "model" and len(path) > 1:
        out["model"] = copy.deepcopy(INLINE_MODEL)
    node = out
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return out


def write_doc(path: Path, doc: Any) -> Path:
    # yaml.safe_dump writes .inf/.nan and huge ints as YAML does; allow_unicode keeps odd strings as text.
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))
    return path


def call(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)`` in this process: (status, stdout, stderr); argparse exits become statuses."""
    try:
        status = main(argv)
    except SystemExit as e:
        status = int(e.code) if isinstance(e.code, int) else 2
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_clean(family: str, status: int, out: str, err: str, *, names: str | None) -> None:
    """The two acceptable ends of a case (see the module docstring)."""
    assert "Traceback" not in err, err
    if status == 2:
        COUNTS[f"{family}: refused"] += 1
        assert out == "", out[:200]
        assert err.endswith("\n") and err.count("\n") == 1, err[:500]
        assert err.startswith("clustersim: error: ") or err.startswith("clustersim "), err[:200]
        assert len(err) < 4000, len(err)
        if names is not None:
            assert names in err, (names, err[:300])
        return
    assert status == 0, (status, err[:500])
    COUNTS[f"{family}: ran"] += 1

    def refuse(constant: str) -> float:
        raise AssertionError(f"{constant} in --json output")

    json.loads(out, parse_constant=refuse)  # strict JSON (the invariants were checked inside simulate)


def run_case(
    family: str, path: Path, capsys: pytest.CaptureFixture[str], *, names: Path | None = None
) -> None:
    """Estimate a scenario file; simulate it when it is small; assert a clean end either way. An error
    must name ``names`` (default: the scenario file)."""
    shown = _shown(names or path)
    status, out, err = call(["run", str(path), "--dry-run", "--json"], capsys)
    if status != 0:
        assert_clean(family, status, out, err, names=shown)
        return
    estimate = json.loads(out)
    if estimate["ops"] is None or estimate["ops"] > ENGINE_OPS:
        COUNTS[f"{family}: estimated only"] += 1
        return
    status, out, err = call(["run", str(path), "--json"], capsys)
    assert_clean(family, status, out, err, names=shown)


def _shown(path: Path) -> str:
    """How an error line shows a file name (control characters escaped), cut to what is always shown."""
    from simulator.errors import one_line_text

    return one_line_text(str(path))[:200]


# ---------------------------------------------------------------------------------------------- families
@fuzz_settings("scenario")
@given(path=st.sampled_from(FIELDS), value=VALUES)
def test_fuzz_mutated_scenario_fields(path, value, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("scenario")
    file = write_doc(folder / "mutated.yaml", set_path(BASE, path, value))
    run_case("scenario", file, capsys)


TOPOLOGY = yaml.safe_load((REPO / "topologies" / "dgx-a100.yaml").read_text())
TOPOLOGY_FIELDS: list[tuple[str, ...]] = [
    ("nodes",), ("host",), ("host", "builder"), ("host", "gpu"), ("host", "gpus"), ("host", "nvlink_gbps"),
    ("host", "nics"), ("host", "nic_gbps"), ("host", "pcie_gbps"), ("host", "pcie_switches"),
    ("host", "nvlink_latency_s"), ("fabric",), ("fabric", "builder"), ("fabric", "radix"),
    ("fabric", "oversubscription"), ("fabric", "tiers"), ("fabric", "link_gbps"), ("fabric", "latency_s"),
    ("fabric", "ecmp"), ("host_groups",), ("name",), ("colour",),
]  # fmt: skip


@fuzz_settings("topology")
@given(path=st.sampled_from(TOPOLOGY_FIELDS), value=VALUES)
def test_fuzz_mutated_topology_files(path, value, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("topology")
    topo = copy.deepcopy(TOPOLOGY)
    node = topo
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    write_doc(folder / "topo.yaml", topo)
    scenario = write_doc(folder / "s.yaml", {**BASE, "cluster": {"topology": "topo.yaml", "nodes": 1}})
    run_case("topology", scenario, capsys, names=folder / "topo.yaml")


AXES = [f"{'.'.join(p)}" for p in FIELDS if len(p) > 1] + ["cluster.overrides.colour", "colour", "", "a..b"]

SWEEP_AXES = st.dictionaries(
    st.sampled_from(AXES),
    st.one_of(
        st.lists(VALUES, max_size=3),
        VALUES,
        st.lists(st.sampled_from([1, 2, 4]), min_size=1, max_size=3),  # mostly valid values
        st.lists(
            st.sampled_from(["bf16", "fp16", "none", "full", "1f1b", "analytical"]),
            min_size=1,
            max_size=2,
        ),
    ),
    max_size=3,
)


@fuzz_settings("sweep")
@given(
    axes=st.one_of(
        st.sampled_from(
            [
                {"parallelism.tp": [1, 2, 4], "parallelism.pp": [1, 2]},
                {"training.micro_batch": [1, 2], "training.precision": ["bf16", "fp16"]},
                {"cluster.nodes": [1, 2], "network.model": ["analytical"]},
            ]
        ),
        SWEEP_AXES,
    ),
    mode=st.sampled_from(["grid", "zip", "spiral", None]),
    flt=st.one_of(
        st.none(), st.text(max_size=30), st.sampled_from(["tp * pp <= 8", "(1).real", "'x' * 10**9"])
    ),
    extra=st.sampled_from([{}, {"colour": 1}, {"base": None}, {"base": "/no/such/base.yaml"}]),
)
def test_fuzz_sweep_files(axes, mode, flt, extra, tmp_path_factory):
    """The up-front half of a batch (every point resolved and checked); what runs after is the scenario
    family's. A bad sweep is one ``ScenarioError`` line naming the sweep file."""
    folder = tmp_path_factory.mktemp("sweep")
    write_doc(folder / "base.yaml", BASE)
    doc: dict[str, Any] = {"base": "base.yaml", "axes": axes}
    if mode is not None:
        doc["mode"] = mode
    if flt is not None:
        doc["filter"] = flt
    sweep = write_doc(folder / "sweep.yaml", {**doc, **extra})
    try:
        points = load_points(sweep)
        for point in points:
            check_point(point)
    except ScenarioError as e:
        COUNTS["sweep: refused"] += 1
        line = e.one_line()
        assert "\n" not in line and len(line) < 4000
        assert str(sweep) in line or "base.yaml" in line, line
        return
    COUNTS["sweep: valid"] += 1
    assert points


COMMANDS = ["run", "batch", "compare", "collective", "plan", "search", "validate"]
FLAGS = [
    "--set", "--json", "--out", "--trace", "--timeline", "--full", "--dry-run", "--workers", "--scheduler",
    "--cluster", "--nodes", "--op", "--sizes", "--algorithm", "--network", "--gpus", "--budget-flops",
    "--budget-gpu-hours", "--tokens", "--model", "--fit", "--mfu", "--top", "--max-points", "--suite",
    "--usd-per-gpu-hour", "--width", "--x", "--y", "--metric", "--format", "--objective", "--bogus",
]  # fmt: skip
TOKENS = st.one_of(
    st.sampled_from(FLAGS),
    st.sampled_from(["0", "-1", "1e308P", "5e-324", "inf", "nan", "1M:8G", "8G:1M", "x", "", "tcp://h:1"]),
    st.sampled_from(["/dev/zero", "/no/such/file.yaml", "/tmp", "dgx-a100", "parallelism.tp=3", "=", "a=b"]),
    st.text(alphabet=string.printable, max_size=12),
)


@fuzz_settings("cli")
@given(command=st.sampled_from(COMMANDS), tokens=st.lists(TOKENS, max_size=5))
def test_fuzz_cli_arguments(command, tokens, capsys, tmp_path_factory):
    """Random arguments to every command, each case made invalid by construction (an unknown flag at the
    end) so that no case starts a long valid job; what must hold is that the mistake found first, by
    argparse or by the command, is one line with exit 2."""
    argv = [command, *tokens, "--bogus-flag"]
    status, out, err = call(argv, capsys)
    assert_clean("cli", status, out, err, names=None)
    assert status == 2


RAW = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    st.sampled_from(
        [
            b"model: gpt3-125m\nmodel: gpt3-350m\n",
            b"a: " + b"[" * 2000 + b"]" * 2000 + b"\n",
            b"a: &x [1, 2]\nb: *x\n",
            b"training: {seq_len: " + b"9" * 5000 + b"}\n",
            b"model: !!python/object/apply:os.system [echo pwned]\n",
            b"\xff\xfe\x00\x00",
            b"--- \n--- \n",
            b"{" * 100,
            b"model: gpt3-125m\ncluster: {topology: dgx-a100, nodes: 1}\ntraining: {seq_len: .inf, global_batch: 8}\n",
            b"# " + b"x" * (3 * 1024 * 1024),
        ]
    ),
)


@fuzz_settings("raw")
@given(data=RAW, name=st.sampled_from(["s.yaml", "new\nline.yaml", "x" * 300, "sub/s.yaml", "dir", "fifo"]))
def test_fuzz_raw_yaml_and_file_attacks(data, name, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("raw")
    (folder / "sub").write_text("a file where a folder should be\n")
    (folder / "dir").mkdir()
    os.mkfifo(folder / "fifo")
    path = folder / name
    if name not in ("sub/s.yaml", "dir", "fifo") and len(name) < 255:
        path.write_bytes(data)
    status, out, err = call(["run", str(path), "--dry-run", "--json"], capsys)
    assert_clean("raw", status, out, err, names=_shown(path) if status == 2 else None)


VALID = st.fixed_dictionaries(
    {
        "layers": st.sampled_from([2, 4, 8]),
        "hidden": st.sampled_from([256, 512, 1024]),
        "heads": st.sampled_from([4, 8, 16]),
        "vocab": st.sampled_from([1000, 32000]),
        "seq_len": st.sampled_from([128, 512, 2048]),
        "micro_batch": st.sampled_from([1, 2]),
        "micro_batches": st.sampled_from([1, 2, 4, 8]),
        "tp": st.sampled_from([1, 2, 4, 8]),
        "pp": st.sampled_from([1, 2, 4]),
        "nodes": st.sampled_from([1, 2]),
        "topology": st.sampled_from(["dgx-a100", "dgx-h100", "hgx-h200"]),
        "precision": st.sampled_from(["bf16", "fp16", "fp32", "fp8"]),
        "recompute": st.sampled_from(["none", "selective", "full"]),
        "zero": st.sampled_from([0, 1, 2, 3]),
        "sequence_parallel": st.booleans(),
        "schedule": st.sampled_from(["1f1b", "gpipe", "interleaved"]),
        "moe": st.one_of(st.none(), st.tuples(st.sampled_from([2, 4, 8]), st.sampled_from([1, 2]))),
        "ep": st.sampled_from([1, 2]),
        "skew": st.floats(min_value=0, max_value=16),
        "network": st.sampled_from(["analytical", "analytical", "flow"]),
    }
)


@fuzz_settings("valid")
@given(v=VALID)
def test_fuzz_random_valid_scenarios(v, tmp_path_factory, capsys):
    """Random well-formed scenarios on tiny clusters: a result whose invariants hold (simulate checks them)
    or a clear refusal (a layout that does not divide, FP8 on an A100 ...)."""
    dp = max(1, v["nodes"] * 8 // (v["tp"] * v["pp"]))
    model: dict[str, Any] = {k: v[k] for k in ("layers", "hidden", "heads", "vocab")}
    if v["moe"] is not None:
        model["moe"] = {"experts": v["moe"][0], "top_k": v["moe"][1]}
    doc = {
        "model": model,
        "cluster": {"topology": v["topology"], "nodes": v["nodes"]},
        "training": {
            "seq_len": v["seq_len"],
            "micro_batch": v["micro_batch"],
            "global_batch": dp * v["micro_batch"] * v["micro_batches"],
            "precision": v["precision"],
            "recompute": v["recompute"],
            "expert_load": {"distribution": "zipf", "skew": v["skew"]},
        },
        "parallelism": {
            "tp": v["tp"],
            "pp": v["pp"],
            "zero": v["zero"],
            "sequence_parallel": v["sequence_parallel"] and v["tp"] > 1,
            "schedule": v["schedule"],
            "ep": v["ep"] if v["moe"] is not None else 1,
            **({"virtual_stages": 2} if v["schedule"] == "interleaved" else {}),
        },
        "network": {"model": v["network"]},
    }
    folder = tmp_path_factory.mktemp("valid")
    run_case("valid", write_doc(folder / "valid.yaml", doc), capsys)


def test_fuzz_counts_are_printed(capsys):
    """Not a check: the outcome counts of the families above, for README's "Robustness" section."""
    with capsys.disabled():
        print("\nfuzz outcomes:", dict(sorted(COUNTS.items())))
