"""Shared command-line plumbing: key=value arguments and errors as one message."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import NoReturn

from lmx.config.rules import did_you_mean
from lmx.errors import ConfigError, LmxError


def debug() -> bool:
    """LMX_DEBUG=1 (or Hydra's HYDRA_FULL_ERROR=1) shows tracebacks instead of one message."""
    return any(os.environ.get(v, "0") not in ("0", "") for v in ("LMX_DEBUG", "HYDRA_FULL_ERROR"))


def exit_code(err: LmxError) -> int:
    return 2 if isinstance(err, ConfigError) else 1


def parse_args(argv: list[str], usage: str) -> dict[str, str]:
    """`key=value` pairs; anything else is a usage error."""
    args: dict[str, str] = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(usage)
            sys.exit(0)
        key, sep, value = arg.partition("=")
        if not sep or not key:
            fail(ConfigError(f"expected key=value, got {arg!r}\n{usage}"))
        args[key] = value
    return args


def split_options(
    args: dict[str, str], options: dict[str, str], command: str, usage: str
) -> tuple[dict[str, str], list[str]]:
    """A command's own options, and the dotted KEY=VALUE overrides of the saved config. An
    undotted key that is no option is an error naming the command's options."""
    own = {k: v for k, v in args.items() if "." not in k}
    unknown = [k for k in own if k not in options]
    if unknown:
        hint = did_you_mean(unknown[0], list(options))
        raise ConfigError(
            f"{command} has no option {unknown[0]!r}{hint}\n"
            f"its options: {', '.join(options)}; a config override takes a dotted key "
            f"(e.g. data.local_dir=PATH)\n{usage}"
        )
    return own, [f"{k}={v}" for k, v in args.items() if "." in k]


def fail(err: LmxError) -> NoReturn:
    print(f"lmx: {err}", file=sys.stderr)
    sys.exit(exit_code(err))


def run(main: Callable[[list[str]], None]) -> None:
    """Call main(argv); an LmxError becomes one message on stderr and a non-zero exit."""
    try:
        main(sys.argv[1:])
    except LmxError as err:
        if debug():
            raise
        fail(err)


def print_to_reader(text: str) -> None:
    """print(text) to stdout; where its reader went away first (lmx report | head), exit
    without a traceback (only this write is covered: other broken pipes still say so)."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # for the exit flush
        sys.exit(1)
