"""The ``objmail`` entry point: where --config may stand, and a reader that goes away."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ops.cli import EX_SIGPIPE, build_parser

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv", [
    ["--config", "site.toml", "user", "add", "bob"],
    ["user", "--config", "site.toml", "add", "bob"],
    ["user", "add", "--config", "site.toml", "bob"],
    ["user", "add", "bob", "--config=site.toml"],
])
def test_config_is_accepted_before_or_after_the_subcommand(argv: list[str]) -> None:
    """--config names the file wherever it stands on the command line."""
    args = build_parser().parse_args(argv)
    assert args.config == "site.toml"


def test_config_before_the_subcommand_is_not_reset_by_it() -> None:
    """A subcommand that did not see --config leaves the one given before it alone."""
    assert build_parser().parse_args(["--config", "a.toml", "dev", "status"]).config == "a.toml"
    assert build_parser().parse_args(["dev", "status"]).config is None


@pytest.mark.system
def test_a_reader_that_goes_away_ends_the_command_quietly() -> None:
    """``objmail ... | head`` ends with the SIGPIPE status and no traceback."""
    script = textwrap.dedent("""
        import sys
        from ops import cli

        def flood(ctx):
            for n in range(200000):
                ctx.say(f"line {n}")
            return 0

        real = cli.build_parser
        def build_parser():
            parser = real()
            sub = next(a for a in parser._actions if a.dest == "command")
            sub.add_parser("flood").set_defaults(handler=flood)
            return parser
        cli.build_parser = build_parser
        sys.exit(cli.main(["flood"]))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == b"line 0\nlin"
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == EX_SIGPIPE
    assert err == b""
