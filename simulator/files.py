"""Input files: where a reference points (a path, or the bare name of a shipped file).

Lives just above ``errors`` in docs/design.md's order so that ``topology`` and ``scenario`` both use it
without importing each other.

The rule for a reference such as ``cluster: ...`` or ``--cluster ...`` (issue #12, "Paths"):

* a **bare name** (no path separator: ``dgx-h100`` or ``dgx-h100.yaml``) is a file of that name in the
  folder the reference is relative to, else the shipped file of that name;
* anything else is a **path**: it must exist (relative to that folder); it never falls back on a shipped
  file that happens to have the same file name, which would silently simulate another cluster.
"""

from __future__ import annotations

import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import yaml

import simulator
from simulator.errors import ScenarioError, shorten

YAML_SUFFIXES = (".yaml", ".yml")


def shipped_dir(kind: str) -> Path | None:
    """The folder of shipped ``topologies`` or ``scenarios``: inside the installed wheel
    (``simulator/_shipped/<kind>``) or, in a source checkout, at the repository root."""
    pkg = Path(simulator.__file__).resolve().parent
    for cand in (pkg / "_shipped" / kind, pkg.parent / kind):
        if cand.is_dir():
            return cand
    return None


def is_bare_name(ref: str) -> bool:
    """Whether ``ref`` names a file without any folder (``dgx-h100``, ``dgx-h100.yaml``)."""
    seps = {"/", os.sep, os.altsep or "/"}
    return (
        bool(ref) and not any(s in ref for s in seps) and ref not in (".", "..") and not ref.startswith("~")
    )


def shipped_file(kind: str, name: str) -> Path | None:
    """The shipped ``kind`` file (``topologies``, ``scenarios``) called ``name`` (with or without
    ``.yaml``), if ``name`` is a bare name and there is one."""
    if not is_bare_name(name):
        return None
    folder = shipped_dir(kind)
    if folder is None:
        return None
    stem = name[: -len(Path(name).suffix)] if name.endswith(YAML_SUFFIXES) else name
    for suffix in YAML_SUFFIXES:
        cand = folder / f"{stem}{suffix}"
        try:
            if cand.is_file():
                return cand
        except (OSError, ValueError):  # a name too long for the file system, a NUL byte (found by the fuzz)
            return None
    return None


def shipped_names(kind: str) -> list[str]:
    """The bare names of the shipped ``kind`` files, sorted."""
    folder = shipped_dir(kind)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder is not None else []


def _exists(path: Path) -> bool:
    """``path.exists()`` that treats an unreadable path (too long, a loop, through a file) as absent."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def resolve_reference(
    ref: str, base_dir: Path, *, kind: str, what: str, file: str | None, field: str | None
) -> Path:
    """The file ``ref`` names (see the module docstring); not found: a ``ScenarioError`` naming ``file``,
    ``field`` and ``ref``, and listing what is valid."""
    if not ref.strip():
        raise ScenarioError(f"{what} is empty; valid: a path or a shipped name", file=file, field=field)
    local = base_dir / Path(ref).expanduser()
    if _exists(local):
        return local if local.is_absolute() else local.absolute()
    shipped = shipped_file(kind, ref)
    if shipped is not None:
        return shipped
    names = ", ".join(shipped_names(kind)) or "none installed"
    if is_bare_name(ref):
        raise ScenarioError(
            f"{what} {shorten(ref)} not found: no such file in {base_dir} and no shipped {kind[:-1]} of that name; "
            f"valid shipped names: {names}",
            file=file,
            field=field,
        )
    raise ScenarioError(
        f"{what} {shorten(ref)} not found (resolved to {shorten(str(local), 200)}); a path must exist (relative paths start from "
        f"{base_dir}); shipped {kind} are used only for a bare name without a folder ({names})",
        file=file,
        field=field,
    )


# ------------------------------------------------------------------------------------------- reading
# Bounds on an input file. The largest shipped YAML file is 16 KB (simulator/models/catalog.yaml) and the
# deepest nesting of any shipped file is 5 levels; an explicit topology of a few thousand links fits in
# well under 2 MiB. Past these, PyYAML's pure-Python parser runs for tens of seconds (a 50 MB scenario)
# or recurses out of the stack (1,000 nested levels), so they are refused up front (issue #12).
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_YAML_DEPTH = 64
# CPython refuses int() of more than 4,300 decimal digits (sys.get_int_max_str_digits, CVE-2020-10735);
# no field of clustersim needs more than 20 (2^63), the rest is left to the fields' own bounds.
MAX_INT_DIGITS = 4300


def _file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be read as a small regular file, or None when it can."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return "not found"
    except NotADirectoryError:
        return "not found: a component of the path is a file, not a folder"
    except OSError as e:  # ELOOP (symlink loop), ENAMETOOLONG, EACCES ...
        return f"cannot be read: {os.strerror(e.errno) if e.errno else e.__class__.__name__}"
    except ValueError:  # an embedded NUL byte
        return "is not a valid path"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(st.st_mode) else "a device or socket"
        return f"is {kind}, not a regular file"
    if st.st_size > MAX_FILE_BYTES:
        return f"is {st.st_size:,} bytes; at most {MAX_FILE_BYTES:,} are read (a scenario is a few KB)"
    return None


def read_text(path: Path, what: str = "file") -> str:
    """The UTF-8 text of a small regular file, or a ``ScenarioError`` saying why it cannot be read."""
    problem = _file_problem(path)
    if problem is None:
        try:
            # O_NONBLOCK: were the file swapped for a FIFO after the check, open() must not block.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(fd, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            problem = f"cannot be read: {os.strerror(e.errno) if e.errno else e.__class__.__name__}"
        else:
            if len(data) > MAX_FILE_BYTES:
                problem = f"is over {MAX_FILE_BYTES:,} bytes (a scenario is a few KB)"
            else:
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError as e:
                    problem = f"is not UTF-8 text (byte {e.start})"
    raise ScenarioError(f"{what} {problem}", file=str(path))


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses what no clustersim file needs and an attacker uses: nesting past
    ``MAX_YAML_DEPTH``, aliases (``*name``: exponential expansion), duplicate keys (the last would win
    silently) and integers past ``MAX_INT_DIGITS``."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not supported; write the value out", event.start_mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise yaml.composer.ComposerError(
                    None, None, f"nested deeper than {MAX_YAML_DEPTH} levels", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:
                continue  # unhashable: SafeConstructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {shorten(key)}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: Any) -> int:
        text = str(node.value)
        if sum(c.isdigit() for c in text) > MAX_INT_DIGITS:
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of more than {MAX_INT_DIGITS:,} digits", node.start_mark
            )
        return int(super().construct_yaml_int(node))


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` within the bounds above; raises ``yaml.YAMLError``."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def read_yaml(path: Path, what: str = "file") -> Any:
    """The YAML document of a file, with one-line errors for a missing, unreadable, huge or bad file."""
    text = read_text(path, what)
    try:
        return parse_yaml(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid syntax"
        raise ScenarioError(f"not valid YAML: {where}{problem}", file=str(path)) from None
    except RecursionError:  # defensive: the depth bound should stop it first
        raise ScenarioError("not valid YAML: nested too deeply", file=str(path)) from None


# ------------------------------------------------------------------------------------------- writing
# The longest file name Linux, macOS and Windows file systems take (NAME_MAX of ext4, APFS, NTFS).
NAME_MAX = 255


def _os_reason(e: OSError) -> str:
    return os.strerror(e.errno) if e.errno else e.__class__.__name__


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (lstat, so a dangling link counts as existing)."""
    cand = path.absolute()
    while True:
        try:
            cand.lstat()
            return cand
        except OSError:  # missing, or below a file (ENOTDIR) or a symlink loop (ELOOP): look higher
            if cand.parent == cand:
                return cand
            cand = cand.parent


def _check_names(path: Path, flag: str) -> None:
    for part in path.parts:
        if len(os.fsencode(part)) > NAME_MAX:
            raise ScenarioError(
                f"a path component is {len(os.fsencode(part)):,} bytes long; at most {NAME_MAX}",
                file=str(path),
                field=flag,
            )


def _check_writable_below(path: Path, flag: str, *, start: Path | None = None) -> None:
    """Whatever ``path`` needs created can be: its closest existing ancestor (from ``start``, default
    ``path`` itself) is a folder we may write in. Errors name ``path``."""
    file = str(path)
    anchor = _nearest_existing(start if start is not None else path)
    try:
        mode = anchor.stat().st_mode  # follows links: a symlink loop or a dangling link raises
    except OSError as e:
        raise ScenarioError(
            f"cannot be created: {anchor} leads nowhere ({_os_reason(e)})", file=file, field=flag
        ) from None
    if not stat.S_ISDIR(mode):
        raise ScenarioError(f"cannot be created: {anchor} is a file, not a folder", file=file, field=flag)
    # A real probe, not os.access: it also catches a read-only file system and root's own limits.
    try:
        fd, probe = tempfile.mkstemp(prefix=".clustersim-probe-", dir=anchor)
    except OSError as e:
        raise ScenarioError(f"cannot write in {anchor}: {_os_reason(e)}", file=file, field=flag) from None
    os.close(fd)
    os.unlink(probe)


def check_output_dir(path: Path, flag: str) -> None:
    """Refuse, before any work, an output folder that cannot be written (a file, unwritable, bad name)."""
    _check_names(path, flag)
    try:
        exists = path.exists()
        is_dir = path.is_dir()
    except OSError as e:
        raise ScenarioError(f"cannot be used: {_os_reason(e)}", file=str(path), field=flag) from None
    if exists and not is_dir:
        raise ScenarioError(
            "is a file, not a folder; give a folder to write into", file=str(path), field=flag
        )
    _check_writable_below(path, flag)


def check_output_file(path: Path, flag: str, suffixes: tuple[str, ...] = ()) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder, a suffix other than
    ``suffixes`` (when given), an unwritable or impossible path."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise ScenarioError(
            f"must end in {' or '.join(suffixes)} (got {shorten(path.suffix or 'no suffix')})",
            file=str(path),
            field=flag,
        )
    _check_names(path, flag)
    try:
        is_dir = path.is_dir()
    except OSError as e:
        raise ScenarioError(f"cannot be used: {_os_reason(e)}", file=str(path), field=flag) from None
    if is_dir:
        raise ScenarioError("is a folder; give a file name", file=str(path), field=flag)
    _check_writable_below(path, flag, start=path.parent)
    # The file is written as a hidden temporary beside it (``.NAME.PID.RANDOM.tmp``), then renamed.
    longest = NAME_MAX - 32
    if len(os.fsencode(path.name)) > longest:
        raise ScenarioError(
            f"the file name is {len(os.fsencode(path.name)):,} bytes long; at most {longest}",
            file=str(path),
            field=flag,
        )


def finite_json(doc: Any, **kwargs: Any) -> str:
    """``json.dumps`` that never writes ``Infinity`` or ``NaN`` (they are not JSON; parsers reject
    them): a non-finite float is written as ``null``, as pydantic writes it in the run report."""
    return json.dumps(_finite(doc), allow_nan=False, **kwargs)


def _finite(node: Any) -> Any:
    if isinstance(node, float) and not math.isfinite(node):
        return None
    if isinstance(node, dict):
        return {k: _finite(v) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_finite(v) for v in node]
    return node
