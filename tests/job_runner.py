"""Drive a worker job in-process, through the protocol's JSON encoding (shared by the jobs tests)."""

from __future__ import annotations

import json

from ntk_studio.core import CancelToken
from ntk_studio.jobs.protocol import decode_request, encode
from ntk_studio.jobs.tasks import JOBS, WorkerState


def run(state: WorkerState, cmd: str, **args) -> tuple[list, dict]:
    """Return (events, result) of one job, both through the protocol's JSON encoding."""
    req = decode_request(json.dumps({"id": "t", "cmd": cmd, "args": args}))
    gen, events = JOBS[cmd](state, req["args"], CancelToken()), []
    while True:
        try:
            kind, payload = next(gen)
        except StopIteration as stop:
            return events, json.loads(encode(stop.value))
        events.append((kind, payload))
