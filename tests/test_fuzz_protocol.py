"""Fuzzing the worker protocol: any line gets a reply or a ProtocolError; the worker never stops serving.

CI runs a few dozen examples per property (seconds); set NTK_FUZZ_EXAMPLES for a long run.
"""

from __future__ import annotations

import io
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ntk_studio.jobs.protocol import COMMANDS, IMMEDIATE_COMMANDS, ProtocolError, decode_event, decode_request
from ntk_studio.jobs.worker import serve

EXAMPLES = int(os.environ.get("NTK_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="NTK_FUZZ_EXAMPLES" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
PING = '{"id": "last", "cmd": "ping"}\n'

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=16),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=16,
)
ARG_NAMES = sorted({name for schema in COMMANDS.values() for name in schema})
requests = st.fixed_dictionaries(
    {"id": st.text(min_size=1, max_size=8) | json_values, "cmd": st.sampled_from(sorted(COMMANDS)) | json_values},
    optional={"args": st.dictionaries(st.sampled_from(ARG_NAMES) | st.text(max_size=6), json_values, max_size=5)
              | json_values, "extra": json_values},
)


def _decode(line: str) -> dict | None:
    try:
        request = decode_request(line)
    except ProtocolError as exc:
        assert str(exc) and "\n" not in str(exc)
        return None
    assert request["cmd"] in COMMANDS and isinstance(request["args"], dict)
    return request


@FUZZ
@given(st.text(max_size=400))
def test_any_text_line(line):
    _decode(line)
    try:
        decode_event(line)
    except ProtocolError:
        pass


@FUZZ
@given(requests)
def test_any_request_shape(message):
    request = _decode(json.dumps(message, allow_nan=True))
    if request is not None:
        for name, (types, _default) in COMMANDS[request["cmd"]].items():
            value = request["args"][name]
            assert value is None or isinstance(value, types) or name in ()


@FUZZ
@given(st.lists(st.text(max_size=200).map(lambda s: s.replace("\n", " ")), max_size=6))
def test_worker_keeps_serving_after_any_lines(lines):
    # Only lines that are not valid job requests reach the worker here: no job ever starts.
    lines = [ln for ln in lines if _decode(ln) is None or _decode(ln)["cmd"] in IMMEDIATE_COMMANDS - {"shutdown"}]
    out = io.StringIO()
    assert serve(io.StringIO("".join(ln + "\n" for ln in lines) + PING), out) == 0
    replies = [json.loads(r) for r in out.getvalue().splitlines()]
    assert replies and replies[-1]["id"] == "last" and replies[-1]["pong"] is True
    assert len(replies) == 1 + sum(1 for ln in lines if ln.strip())
