"""Fuzzing the project loader: whatever a .ntkproj holds, load_project returns a Project or raises ProjectError.

CI runs a few dozen examples per property (seconds); set NTK_FUZZ_EXAMPLES for a long run.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_support import project_header

from ntk_studio.app.project import Project, ProjectError, load_project

EXAMPLES = int(os.environ.get("NTK_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="NTK_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
KEYS = ("format", "version", "app_version", "inputs", "settings", "example", "model", "data", "path",
        "relative_path", "arch", "sha256", "arch_sha256", "needs_pickle", "trust_pickle", "target", "features",
        "classification", "extra")


def _load(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "f.ntkproj"
        path.write_bytes(data)
        try:
            result = load_project(path)
        except ProjectError as exc:
            assert str(exc) and "\n" not in str(exc).strip()
            return
        assert isinstance(result, Project)
        assert all(args.get("trust_pickle") in (False, None) for cmd, args in result.inputs.load_steps()
                   if cmd == "load_model")


def _zip(project: bytes | str, results: bytes | str = "{}") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("project.json", project)
        zf.writestr("results.json", results)
    return buf.getvalue()


def _set(tree: dict, path: list[str], value) -> dict:
    node = tree
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value
    return tree


@FUZZ
@given(path=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3), value=json_values)
def test_any_value_anywhere_in_project_json(path, value):
    header = _set(project_header({"model": {"path": "m.pt"}, "data": {"path": "d.csv"}}), path, value)
    _load(_zip(json.dumps(header)))


@FUZZ
@given(header=json_values, results=json_values)
def test_any_json_as_the_members(header, results):
    _load(_zip(json.dumps(header), json.dumps(results)))


VALID = _zip(json.dumps(project_header({"example": "sine"})), json.dumps({"fit_gp": {"x": [1, 2, 3]}}))


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       cut=st.integers(0, len(VALID)))
def test_mutated_archive_bytes(edits, cut):
    data = bytearray(VALID)
    for at, byte in edits:
        data[at] = byte
    _load(bytes(data[:cut]) if cut else bytes(data))


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    _load(data)
