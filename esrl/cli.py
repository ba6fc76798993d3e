"""The ``esrl`` command line: ``esrl envs`` lists environments, ``esrl train`` trains."""

from __future__ import annotations

import argparse


def _envs(args: argparse.Namespace) -> int:
    import esrl

    for env_id in esrl.list_envs():
        if args.filter in env_id:
            print(env_id)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(prog="esrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    envs = sub.add_parser("envs", help="list registered environment ids")
    envs.add_argument("filter", nargs="?", default="", help="only ids containing this")
    envs.set_defaults(func=_envs)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``esrl`` console script."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
