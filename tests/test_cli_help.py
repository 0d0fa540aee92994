"""The CLI's help and listings read as a person expects: defaults shown, a header on tables."""

from __future__ import annotations

import argparse
import re

import pytest

from ntk_studio.cli.main import _build_parser, main


def _subparsers():
    parser = _build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices


def _meaningful(default) -> bool:
    return default not in (None, False, argparse.SUPPRESS) and not (isinstance(default, list) and not default)


def _option_help(text: str, option: str) -> str:
    """Return the help paragraph of `option` in the options section (not the usage line)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"  {re.escape(option)}\b", line))
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(" " * 4) or re.match(r"  -", line):
            break
        block.append(line)
    return " ".join(" ".join(block).split())


@pytest.mark.parametrize("command", ["adapt", "compare", "export", "demo", "inspect", "predict", "worker"])
def test_help_states_every_meaningful_default_once(command):
    parser = _subparsers()[command]
    text = parser.format_help()
    checked = 0
    for action in parser._actions:
        if not action.option_strings or not _meaningful(action.default) or action.help in (None, argparse.SUPPRESS):
            continue
        block = _option_help(text, action.option_strings[-1] if action.option_strings[-1].startswith("--") else action.option_strings[0])
        assert block.count("default") == 1, (action.option_strings, block)
        checked += 1
    assert checked >= 2  # at least --threads and --arch-timeout


def test_help_shows_the_value_of_a_default_it_did_not_describe():
    text = _subparsers()["demo"].format_help()
    assert "(default 1)" in _option_help(text, "--threads")
    assert re.search(r"default:? 0\b", _option_help(_subparsers()["adapt"].format_help(), "--seed"))


def test_help_does_not_print_defaults_that_mean_nothing():
    text = _subparsers()["adapt"].format_help()
    assert "default: None" not in text and "default: False" not in text


def test_examples_listing_has_a_header(capsys):
    assert main(["examples"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["example", "installed", "description"]
    assert [line.split()[0] for line in lines[1:]] == ["sine", "hprice3", "diabetes", "faces", "rotation"]


def test_sine_description_says_what_the_model_was_pretrained_on(capsys):
    from ntk_studio.core.examples.sine import SOURCE_TASKS

    assert main(["examples"]) == 0
    sine = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("sine"))
    assert f"{len(SOURCE_TASKS)} source sine tasks" in sine
