"""``stylemamba`` / ``python -m comfyui_stylemamba``: one entry, one sub-command per job."""

from __future__ import annotations

import argparse
import sys

from . import doctor, evaluate, fit, stylize, train

#: Sub-command modules; each has ``HELP``, ``add_arguments(parser)`` and ``run(args) -> int``.
COMMANDS = {"stylize": stylize, "fit": fit, "train": train, "evaluate": evaluate, "doctor": doctor}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stylemamba",
        description="StyleMamba style transfer in VAE latent space, from a style text, style images or a mix of them: "
        "stylize images, fit one style, train one model over many styles, evaluate against CLIPstyler, check the install.",
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        sub = subcommands.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (FileNotFoundError, FileExistsError, ValueError, NotADirectoryError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
