"""The worker protocol: encoding, strict request validation, and the serve loop driven in-process."""

from __future__ import annotations

import argparse
import io
import json
import math
import sys

import numpy as np
import pytest
import torch

from ntk_studio.jobs.protocol import (
    COMMANDS,
    ProtocolError,
    decode_event,
    decode_request,
    encode,
    error_event,
    request,
)
from ntk_studio.jobs.worker import UNKNOWN_ID, serve


def test_event_round_trip_turns_tensors_and_arrays_into_lists():
    event = {"id": "j1", "type": "result", "mean": torch.tensor([1.5, -2.0], dtype=torch.float64),
             "grid": np.array([[0.25], [0.5]]), "n": np.int64(3), "nested": {"t": (torch.tensor(1.0),)}}
    line = encode(event)
    assert line.endswith("\n") and line.count("\n") == 1
    back = decode_event(line)
    assert back == {"id": "j1", "type": "result", "mean": [1.5, -2.0], "grid": [[0.25], [0.5]], "n": 3,
                    "nested": {"t": [1.0]}}


def test_float64_values_survive_exactly():
    values = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    back = decode_event(encode({"id": "a", "type": "result", "v": values}))
    assert torch.equal(torch.tensor(back["v"], dtype=torch.float64), values)


def test_request_round_trip_fills_defaults():
    req = decode_request(encode(request("r1", "fit_gp", noise=0.2, n_adapt=10)))
    assert req["id"] == "r1" and req["cmd"] == "fit_gp"
    assert req["args"]["noise"] == 0.2 and req["args"]["n_adapt"] == 10
    assert req["args"]["solver"] == "auto" and req["args"]["prior_var"] == 1.0
    assert set(req["args"]) == set(COMMANDS["fit_gp"])
    # ints are accepted where floats are meant, and come back as floats
    assert decode_request(encode(request("r2", "finetune", lr=1)))["args"]["lr"] == 1.0


@pytest.mark.parametrize(
    ("line", "fragment", "rid"),
    [
        ("not json", "Not valid JSON", None),
        ("[1, 2]", "JSON object", None),
        ('{"cmd": "ping"}', "'id'", None),
        ('{"id": 5, "cmd": "ping"}', "'id'", None),
        ('{"id": "x", "cmd": "explode"}', "Unknown command 'explode'", "x"),
        ('{"id": "x", "cmd": "ping", "extra": 1}', "Unknown request fields", "x"),
        ('{"id": "x", "cmd": "ping", "args": [1]}', "'args' must be", "x"),
        ('{"id": "x", "cmd": "load_example", "args": {}}', "needs the argument 'name'", "x"),
        ('{"id": "x", "cmd": "fit_gp", "args": {"bogus": 1}}', "Unknown arguments", "x"),
        ('{"id": "x", "cmd": "fit_gp", "args": {"noise": "big"}}', "'noise' must be float/int", "x"),
        ('{"id": "x", "cmd": "fit_gp", "args": {"seed": true}}', "'seed' must be int", "x"),
        ('{"id": "x", "cmd": "fit_gp", "args": {"seed": 1.5}}', "'seed' must be int", "x"),
        ('{"id": "x", "cmd": "fit_gp", "args": {"noise": NaN}}', "must be finite", "x"),
        ('{"id": "x", "cmd": "cancel", "args": {"job": 3}}', "'job' must be str", "x"),
    ],
)
def test_invalid_requests_raise_protocol_error_with_the_request_id(line, fragment, rid):
    with pytest.raises(ProtocolError, match=None) as info:
        decode_request(line)
    assert fragment in str(info.value)
    assert info.value.request_id == rid


def test_unknown_event_type_is_rejected():
    with pytest.raises(ProtocolError, match="Unknown event type"):
        decode_event('{"id": "j1", "type": "party"}')


def test_error_event_carries_type_message_and_traceback():
    try:
        raise ValueError("bad value")
    except ValueError as exc:
        event = error_event("j9", exc)
    assert event["type"] == "error" and event["error_type"] == "ValueError"
    assert event["message"] == "bad value" and "Traceback" in event["details"]


def test_nan_metrics_travel():
    back = decode_event(encode({"id": "a", "type": "result", "rmse": math.nan}))
    assert math.isnan(back["rmse"])


def _serve(lines: list[str]) -> list[dict]:
    out = io.StringIO()
    assert serve(io.StringIO("".join(lines)), out) == 0
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_serve_answers_bad_lines_and_keeps_serving():
    replies = _serve(["garbage\n", "\n", encode(request("a", "nope")), encode(request("b", "ping")),
                      encode(request("c", "shutdown")), encode(request("d", "ping"))])
    assert [(r["id"], r["type"]) for r in replies] == [(UNKNOWN_ID, "error"), ("a", "error"), ("b", "result"),
                                                       ("c", "result")]  # nothing after shutdown
    assert replies[1]["error_type"] == "ProtocolError" and "nope" in replies[1]["message"]
    assert replies[2]["pong"] is True and replies[2]["busy"] is None


def test_serve_reports_a_job_error_without_dying():
    replies = _serve([encode(request("f", "fit_gp")), encode(request("p", "ping")), encode(request("s", "shutdown"))])
    by_id = {}
    for r in replies:
        by_id.setdefault(r["id"], []).append(r)
    assert by_id["f"][-1]["type"] == "error" and by_id["f"][-1]["error_type"] == "ModelLoadError"
    assert "load an example or a model file" in by_id["f"][-1]["message"]
    assert by_id["p"][-1]["type"] == "result" and by_id["s"][-1]["shutdown"] is True


def test_cli_worker_subcommand_serves_stdin(monkeypatch):
    from ntk_studio.cli.commands import worker as worker_cmd

    parser = argparse.ArgumentParser()
    worker_cmd.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["worker"])
    out = io.StringIO()
    monkeypatch.setattr(sys, "stdin", io.StringIO(encode(request("p", "ping"))))
    monkeypatch.setattr(sys, "stdout", out)
    assert args.run(args) == 0
    assert sys.stdout is out  # restored after serving
    reply = json.loads(out.getvalue())
    assert reply["id"] == "p" and reply["pong"] is True


def test_flags_accept_booleans_but_numbers_do_not():
    from ntk_studio.jobs.protocol import ProtocolError, decode_request, encode

    ok = decode_request(encode({"id": "a", "cmd": "fit_gp", "args": {"fit_hyper": True}}))
    assert ok["args"]["fit_hyper"] is True
    import pytest

    with pytest.raises(ProtocolError, match="fit_hyper"):
        decode_request(encode({"id": "b", "cmd": "fit_gp", "args": {"fit_hyper": 1}}))
    with pytest.raises(ProtocolError, match="noise"):
        decode_request(encode({"id": "c", "cmd": "fit_gp", "args": {"noise": True}}))
