"""``python -m simulator.calibrate [PART ...] [OPTIONS]``: refit calibration parts (default: all of them).

Each part is a module with ``main(argv) -> int`` that fits its constants on the packaged validation data
and rewrites its file under ``simulator/hardware/calibration/``; OPTIONS (e.g. ``--check``) go to every
part run. The exit status is the worst of the parts'.
"""

from __future__ import annotations

import importlib
import sys

# part name → module with ``main(argv: list[str]) -> int``, run in this order
PARTS: dict[str, str] = {
    "links": "simulator.calibrate.links",
    "attention": "simulator.calibrate.attention",  # kernel measurements; the compute fit builds on it
    "compute": "simulator.calibrate.compute",
    "fp8": "simulator.calibrate.fp8",  # per-(GPU, FP8) GEMM efficiency, on top of the compute fit
    "transfer": "simulator.calibrate.gemm_transfer",  # B200's GEMM constants from the H100's, via kernel tables
    "host": "simulator.calibrate.host",  # per-framework host launch cost, on the rows whose host waits for the GPU
}


def main(argv: list[str] | None = None) -> int:
    """Run the named parts (all when none is named) with the remaining options."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        print(f"parts: {', '.join(PARTS)}")
        return 0
    chosen: list[str] = []
    while args and not args[0].startswith("-"):
        name = args.pop(0)
        if name not in PARTS:
            print(f"calibrate: error: unknown part {name!r}; valid: {', '.join(PARTS)}", file=sys.stderr)
            return 2
        chosen.append(name)
    status = 0
    for name in chosen or list(PARTS):
        status = max(status, int(importlib.import_module(PARTS[name]).main(args)))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
