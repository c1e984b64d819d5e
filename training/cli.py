"""The ``glasszoo`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import PackageNotFoundError, version

from glasszoo.training.errors import GlasszooError


def _version() -> str:
    try:
        return version("glasszoo")
    except PackageNotFoundError:
        return "unknown"


def _cmd_run(args: argparse.Namespace) -> int:
    from glasszoo.training.config import load_config
    from glasszoo.training.runner import run_experiment

    cfg = load_config(args.config, args.set)
    run_experiment(cfg, out=args.out, overwrite=args.overwrite)
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from glasszoo.models import list_models, model_info

    names = list_models(args.pattern)
    if not names:
        print(f"no registered model matches {args.pattern!r}", file=sys.stderr)
        return 1
    w = max(len(n) for n in names)
    for n in names:
        info = model_info(n)
        print(f"{n.ljust(w)}  {info.family:<12} {info.input_kind:<8} explains: {', '.join(info.explanations)}"
              f"{'  — ' + info.paper if info.paper and args.verbose else ''}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from glasszoo.training.config import load_config
    from glasszoo.training.data import load_caseset

    cfg = load_config(args.config, args.set)
    cs = load_caseset(cfg.data, seed=cfg.seed)
    print(json.dumps(cs.summary(), indent=2))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from pathlib import Path

    from glasszoo.evaluation.results import format_markdown, format_table
    from glasszoo.training.errors import DataError

    path = Path(args.run_dir) / "metrics.json"
    if not path.exists():
        raise DataError(f"{path} not found: RUN_DIR must be a directory written by 'glasszoo run'")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    print(format_markdown(metrics) if args.markdown else format_table(metrics))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glasszoo",
        description="Train interpretable and black-box models side by side on one split, explain them and measure "
                    "the interpretability-accuracy trade-off.",
    )
    parser.add_argument("--version", action="version", version=f"glasszoo {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="train, evaluate and explain every model of a config; write runs/<experiment>/",
                       description="Train every model listed in CONFIG on the same split, evaluate and explain them "
                                   "on the test split, and write config.yaml, splits.csv, metrics.json, "
                                   "tradeoff.csv, figures/ and one folder per model.")
    p.add_argument("config", help="YAML experiment config, e.g. configs/quickstart.yaml")
    p.add_argument("--out", help="run directory (default: <output_dir>/<experiment>, numbered if taken)")
    p.add_argument("--overwrite", action="store_true", help="allow writing over an existing run directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set training.max_epochs=2 (repeatable)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'proto*'")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the paper each model follows")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("show", help="print the results table of a finished run")
    p.add_argument("run_dir", help="a run directory (holds metrics.json)")
    p.add_argument("--markdown", action="store_true", help="as a Markdown table (for docs/results.md)")
    p.set_defaults(func=_cmd_show)

    p = sub.add_parser("data", help="load the data of a config and print its summary (counts per split and class)")
    p.add_argument("config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except GlasszooError as exc:
        print(f"glasszoo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("glasszoo: interrupted; finished models are kept in the run directory", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
