"""Help and start-up (issue 14, item 2): every option of every subcommand has help text, ``gsit --help``
shows where to start, and neither ``import gsit`` nor ``gsit --help`` imports torch."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gsit import cli

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _subparsers():
    parser = cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return parser, dict(action.choices)
    raise AssertionError("no subcommands")


def test_every_option_of_every_subcommand_has_help():
    _, subs = _subparsers()
    assert {"train", "eval", "predict", "tune", "report", "export"} <= set(subs)
    missing = [
        (name, a.option_strings or a.dest)
        for name, p in subs.items()
        for a in p._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()
    ]
    assert missing == []


def test_defaults_are_shown(capsys):
    _, subs = _subparsers()
    text = subs["train"].format_help()
    assert "(default: runs)" in text and "(default: toml)" in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: 8)" in subs["efficiency"].format_help()


def test_top_level_help_says_where_to_start(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "start here:" in out and "gsit train" in out and "--print-config" in out


def _modules_after(code: str) -> set[str]:
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    probe = (
        f"import sys\n{code}\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('torch', 'numpy', 'transformers', 'triton', 'optuna', 'matplotlib'))))"
    )
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 0, res.stderr
    return set(res.stdout.split())


def test_import_gsit_and_help_do_not_import_torch():
    assert _modules_after("import gsit; gsit.__version__") == set()
    help_all = (
        "import contextlib, io\nfrom gsit import cli\n"
        "for argv in (['--help'], ['train', '--help'], ['tune', '--help']):\n"
        "    try:\n        with contextlib.redirect_stdout(io.StringIO()):\n"
        "            cli.main(argv)\n"
        "    except SystemExit as e:\n        assert e.code == 0\n"
    )
    assert _modules_after(help_all) == set()
    # the heavy names are still there, loaded on first use
    assert "torch" in _modules_after("import gsit; gsit.GsiT")
