"""Command line: python -m core merge | plan | inspect | methods | rerank | evaluate | weights | sweep | demo.

    python -m core merge RECIPE.yml OUT_DIR [--device D] [--overwrite] [--seed N]
    python -m core plan RECIPE.yml [--out OUT_DIR] [--device D]
    python -m core inspect MODEL
    python -m core methods
    python -m core rerank --model A [--model B] (--query Q --doc D … | --input FILE.jsonl) [--json]
    python -m core evaluate --model A --model B --input FILE.jsonl [--json] [--report STEM]
    python -m core weights --model A --model B --examples FILE.jsonl [--tau 5]
    python -m core sweep --model-a A --model-b B --set [NAME=]FILE … [--alphas 0,0.5,1]
    python -m core demo [--models-dir DIR] [--seed N] [--force]

On success exit 0. On bad input: one line `error: …` on stderr, exit 1, and OUT_DIR untouched
(no traceback unless --debug). Ctrl-C stops a merge cleanly (exit 130).
"""
from __future__ import annotations

import argparse
import sys
import traceback

from core.cli.commands import inspect_command, merge_command, methods_command, plan_command
from core.cli.demo import demo_command
from core.cli.mix import sweep_command, weights_command
from core.cli.evaluate import evaluate_command
from core.cli.rerank import rerank_command
from core.errors import MergeCancelled, MergeDeskError, OutputExists, one_line

COMMANDS = (merge_command, plan_command, inspect_command, methods_command, rerank_command, evaluate_command,
            weights_command, sweep_command, demo_command)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except MergeCancelled as error:
        print(f"stopped: {error}", file=sys.stderr)
        return 130
    except MergeDeskError as error:
        if args.debug:
            traceback.print_exc()
        message = error.replace_hint("pass --overwrite") if isinstance(error, OutputExists) else error
        print(f"error: {message}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - a bug: keep it to one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"error: internal error {type(error).__name__}: {one_line(error)} (run again with --debug)",
              file=sys.stderr)
        return 3


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    parser = argparse.ArgumentParser(prog="python -m core", parents=[common],
                                     description="MergeDesk: merge models and see what the merge did.")
    sub = parser.add_subparsers(title="commands")
    for command in COMMANDS:
        command(sub, common)
    return parser


if __name__ == "__main__":
    sys.exit(main())
