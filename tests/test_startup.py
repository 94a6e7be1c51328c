"""Start-up cost: a command that draws nothing imports no plotting library (issue #10 point 8, issue #11).

Only *which* modules are loaded is checked here, in a fresh interpreter; how long start-up takes is
measured in BENCHMARKS.md, never asserted in a test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _modules_after(code: str) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter; it must print one JSON object on its last line."""
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_help_imports_no_plotting_library() -> None:
    got = _modules_after(
        "import contextlib, io, json, sys\n"
        "from simulator import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        "print(json.dumps({'mpl': 'matplotlib' in sys.modules, 'simpy': 'simpy' in sys.modules}))\n"
    )
    assert got == {"mpl": False, "simpy": False}


def test_run_without_charts_imports_no_plotting_library() -> None:
    got = _modules_after(
        "import contextlib, io, json, sys\n"
        "from simulator import cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    rc = cli.main(['run', 'scenarios/quickstart.yaml', '--json'])\n"
        "print(json.dumps({'rc': rc, 'mpl': 'matplotlib' in sys.modules}))\n"
    )
    assert got == {"rc": 0, "mpl": False}


def test_commands_import_no_plotting_library() -> None:
    got = _modules_after(
        "import json, sys\n"
        "import simulator.commands.run, simulator.commands.search, simulator.commands.plan\n"
        "import simulator.commands.compare, simulator.commands.batch, simulator.commands.collective\n"
        "print(json.dumps({'mpl': 'matplotlib' in sys.modules}))\n"
    )
    assert got == {"mpl": False}
