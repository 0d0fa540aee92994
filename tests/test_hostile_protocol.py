"""Hostile worker-protocol lines: each gets one ProtocolError reply, and the worker keeps serving."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time

import pytest
from test_hostile_support import CASE_SECONDS

from ntk_studio.jobs.protocol import (
    MAX_JSON_DEPTH,
    MAX_LINE_CHARS,
    ProtocolError,
    decode_event,
    decode_request,
    read_line,
)
from ntk_studio.jobs.worker import UNKNOWN_ID, Worker, serve

PING = '{"id": "after", "cmd": "ping"}\n'
BAD_REQUESTS = {
    "not json": ("{nope", "Not valid JSON"),
    "truncated": ('{"id": "a", "cmd": "ping"', "Not valid JSON"),
    "array": ("[1, 2, 3]", "JSON object"),
    "string": ('"ping"', "JSON object"),
    "number": ("42", "JSON object"),
    "null": ("null", "JSON object"),
    "no id": ('{"cmd": "ping"}', "'id'"),
    "empty id": ('{"id": "", "cmd": "ping"}', "'id'"),
    "int id": ('{"id": 7, "cmd": "ping"}', "'id'"),
    "list id": ('{"id": ["a"], "cmd": "ping"}', "'id'"),
    "unknown cmd": ('{"id": "a", "cmd": "rm -rf"}', "Unknown command"),
    "no cmd": ('{"id": "a"}', "Unknown command"),
    "extra field": ('{"id": "a", "cmd": "ping", "eval": "x"}', "Unknown request fields"),
    "args list": ('{"id": "a", "cmd": "ping", "args": []}', "'args' must be"),
    "args string": ('{"id": "a", "cmd": "ping", "args": "x"}', "'args' must be"),
    "unknown arg": ('{"id": "a", "cmd": "fit_gp", "args": {"exec": 1}}', "Unknown arguments"),
    "missing path": ('{"id": "a", "cmd": "load_model", "args": {}}', "needs the argument 'path'"),
    "path int": ('{"id": "a", "cmd": "load_model", "args": {"path": 3}}', "'path' must be str"),
    "trust string": ('{"id": "a", "cmd": "load_model", "args": {"path": "m.pt", "trust_pickle": "yes"}}',
                     "'trust_pickle' must be bool"),
    "noise NaN": ('{"id": "a", "cmd": "fit_gp", "args": {"noise": NaN}}', "finite"),
    "noise Infinity": ('{"id": "a", "cmd": "fit_gp", "args": {"noise": Infinity}}', "finite"),
    "noise 1e999": ('{"id": "a", "cmd": "fit_gp", "args": {"noise": 1e999}}', "finite"),
    "noise negative": ('{"id": "a", "cmd": "fit_gp", "args": {"noise": -0.1}}', "'noise' must be from"),
    "prior_var zero": ('{"id": "a", "cmd": "fit_gp", "args": {"prior_var": 0}}', "'prior_var' must be from"),
    "prior_var string": ('{"id": "a", "cmd": "fit_gp", "args": {"prior_var": "1"}}', "'prior_var' must be"),
    "epochs zero": ('{"id": "a", "cmd": "finetune", "args": {"epochs": 0}}', "'epochs' must be from"),
    "epochs huge": ('{"id": "a", "cmd": "finetune", "args": {"epochs": 1000000000000}}', "'epochs' must be from"),
    "epochs float": ('{"id": "a", "cmd": "finetune", "args": {"epochs": 2.5}}', "'epochs' must be int"),
    "epochs bool": ('{"id": "a", "cmd": "finetune", "args": {"epochs": true}}', "'epochs' must be int"),
    "lr negative": ('{"id": "a", "cmd": "finetune", "args": {"lr": -1}}', "'lr' must be from"),
    "batch zero": ('{"id": "a", "cmd": "finetune", "args": {"batch_size": 0}}', "'batch_size' must be from"),
    "grid one": ('{"id": "a", "cmd": "fit_gp", "args": {"grid_points": 1}}', "'grid_points' must be from"),
    "grid huge": ('{"id": "a", "cmd": "fit_gp", "args": {"grid_points": 10000000}}', "'grid_points' must be from"),
    "n_adapt zero": ('{"id": "a", "cmd": "plan", "args": {"n_adapt": 0}}', "'n_adapt' must be from"),
    "seed negative": ('{"id": "a", "cmd": "plan", "args": {"seed": -1}}', "'seed' must be from"),
    "features dict": ('{"id": "a", "cmd": "load_data", "args": {"path": "d.csv", "features": {}}}',
                      "'features' must be"),
    "cancel no job": ('{"id": "a", "cmd": "cancel", "args": {}}', "needs the argument 'job'"),
    "deep array": ("[" * 100_000 + "]" * 100_000, "nested more than"),
    "deep object": ('{"a":' * 5_000 + "1" + "}" * 5_000, "nested more than"),
    "just past the depth": ('{"id": "a", "cmd": "ping", "args": {"x": ' + "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH
                            + "}}", "nested more than"),
    "lone surrogate": ('{"id": "\\ud800", "cmd": "nope"}', "Unknown command"),
    "binary junk": ("\x00\x01\x02\xff", "Not valid JSON"),
    "duplicate keys": ('{"id": "a", "id": "b", "cmd": "explode"}', "Unknown command"),
}


def _serve(text: str) -> list[dict]:
    out = io.StringIO()
    start = time.monotonic()
    assert serve(io.StringIO(text), out) == 0
    assert time.monotonic() - start < CASE_SECONDS
    return [json.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.parametrize("line", list(BAD_REQUESTS.values()), ids=list(BAD_REQUESTS))
def test_bad_request_is_a_protocol_error_and_the_worker_keeps_serving(line):
    text, phrase = line
    with pytest.raises(ProtocolError) as info:
        decode_request(text)
    message = str(info.value)
    assert phrase.lower() in message.lower() and "\n" not in message
    replies = _serve(text + "\n" + PING)
    assert [r["type"] for r in replies] == ["error", "result"], replies
    assert replies[0]["error_type"] == "ProtocolError" and replies[1]["pong"] is True


@pytest.mark.parametrize("size", [MAX_LINE_CHARS + 1, 5 * MAX_LINE_CHARS])
def test_oversized_line_is_skipped_while_reading(size):
    replies = _serve('{"id": "x", "pad": "' + "a" * size + '"}\n' + PING)
    assert [r["type"] for r in replies] == ["error", "result"]
    assert replies[0]["id"] == UNKNOWN_ID and "longer than" in replies[0]["message"]


class _CountingStream(io.StringIO):
    """Counts the most characters one read call returned: reading must stay bounded."""

    biggest = 0

    def readline(self, size=-1):
        line = super().readline(size)
        self.biggest = max(self.biggest, len(line))
        return line


def test_read_line_never_holds_more_than_the_limit():
    stream = _CountingStream("x" * 3_000_000 + "\nok\n")
    line, cut = read_line(stream, 1000)
    assert cut and len(line) == 1000 and stream.biggest <= 1001
    assert read_line(stream, 1000) == ("ok\n", False)


@pytest.mark.parametrize("line", [
    '{"id": "a"}', '{"id": "a", "type": "boom"}', "[" * 10_000, '{"id": "a", "type": "result", "x": '
    + "[" * 200 + "]" * 200 + "}", "nope",
], ids=["no type", "unknown type", "deep", "deep payload", "not json"])
def test_bad_event_lines_are_protocol_errors(line):
    with pytest.raises(ProtocolError):
        decode_event(line)


def test_a_handler_crash_on_a_line_is_still_a_reply():
    out = io.StringIO()
    worker = Worker(out)
    assert worker.handle("[" * 100_000) is True
    assert json.loads(out.getvalue())["error_type"] == "ProtocolError"


@pytest.mark.slow
def test_real_worker_survives_hostile_lines():
    """One real worker process: a deep line, a huge line and garbage, then a ping is still answered."""
    hostile = "[" * 200_000 + "\n" + '{"id":"x","p":"' + "a" * (2 * MAX_LINE_CHARS) + '"}\n' + "\x00garbage\n" + PING
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ntk_studio.jobs.worker"], input=hostile, capture_output=True,
                          text=True, timeout=120)
    replies = [json.loads(line) for line in done.stdout.splitlines()]
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["type"] for r in replies] == ["error", "error", "error", "result"]
    assert all(r["error_type"] == "ProtocolError" for r in replies[:3]) and replies[3]["pong"] is True
    assert "Traceback" not in done.stderr
    assert time.monotonic() - start < 120
