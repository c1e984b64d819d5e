"""The ``glasszoo`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import PackageNotFoundError, version

from glasszoo.training.errors import GlasszooError


def package_version() -> str:
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


def _describe(exps: list, class_names: list[str]) -> str:
    """A few lines of text for the terminal: the prediction's evidence, in words."""
    from glasszoo.models import ConceptEvidence, Heatmap, PrototypeEvidence

    lines = []
    for e in exps:
        if isinstance(e, PrototypeEvidence):
            for m in e.matches[0]:
                src = f"training case {m.source_case_id} {list(m.source_box)}" if m.source_case_id else "not projected"
                lines.append(f"  prototype {m.prototype} ({class_names[m.prototype_class]}): similarity "
                             f"{m.similarity:.2f}, {m.contribution:+.2f} points; looks like {src}")
        elif isinstance(e, ConceptEvidence):
            for k, name in enumerate(e.concept_names):
                true = "" if e.true is None else f" (true {e.true[0, k]:g})"
                lines.append(f"  concept {name}: {e.predicted[0, k]:.2f}{true}, {e.contribution[0, k]:+.2f} points")
        elif isinstance(e, Heatmap):
            lines.append(f"  heatmap '{e.method}' for class {class_names[int(e.target[0])]}")
    return "\n".join(lines)


def _cmd_explain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from glasszoo.evaluation.case_figures import explain_case
    from glasszoo.training.errors import DataError
    from glasszoo.training.runner import safe_filename, training_image_lookup
    from glasszoo.training.saved import open_run

    if not args.case and not args.image:
        raise DataError("nothing to explain: give --case CASE_ID (see RUN_DIR/splits.csv) or --image PATH")
    run = open_run(args.run_dir)
    name = args.model
    if name is None:
        if len(run.model_names) != 1:
            raise DataError(f"the run has several models; choose one with --model ({', '.join(run.model_names)})")
        name = run.model_names[0]
    from glasszoo.models import model_info

    spec = run.spec(name)  # unknown model name -> clear error before the data is rebuilt
    if model_info(spec.model).input_kind != "image":
        raise DataError(f"'{name}' is a tabular model: it explains feature tables, not images; its per-case "
                        f"feature contributions come from model.explain(X) (see docs/models/glassbox.md) and its "
                        f"whole logic from model.explain_global()")
    cs = run.caseset
    items = []  # (label for the file, image, case id, true label, mask, true concepts)
    for cid in args.case:
        r = run.case_row(cid)
        items.append((safe_filename(cid), cs.images[r], str(cs.case_ids[r]), int(cs.labels[r]),
                      None if cs.masks is None else cs.masks[r], None if cs.concepts is None else cs.concepts[r]))
    for path in args.image:
        items.append((safe_filename(Path(path).stem), run.read_image(path, resize=args.resize), None, None, None,
                      None))
    model = run.load_model(name)
    source_image = training_image_lookup(cs)
    out_dir = Path(args.out) if args.out else run.run_dir / "explanations" / name
    for stem, image, cid, label, mask, concepts in items:
        fig = out_dir / f"{stem}.png"
        exps = explain_case(model, image, cs.class_names, fig, source_image, cid, label, mask, top_k=args.top_k,
                            true_concepts=concepts)
        proba = model.predict_proba(image[None])[0]
        k = int(proba.argmax())
        print(f"{cid or stem}: predicted {cs.class_names[k]} (p = {proba[k]:.2f})"
              + (f", true {cs.class_names[label]}" if label is not None else "") + f" -> {fig}")
        print(_describe(exps, cs.class_names))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    from glasszoo.evaluation.bench import SECTIONS, format_section, write_markdown
    from glasszoo.training.errors import ConfigError
    from glasszoo.training.runner import atomic_write_text

    names = list(SECTIONS) if not args.only else [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ConfigError(f"--only: unknown benchmark section '{unknown[0]}'; sections: {', '.join(SECTIONS)}")
    sections = []
    for n in names:
        print(f"bench: {n} ...", file=sys.stderr, flush=True)
        sec = SECTIONS[n](n_cases=args.n_cases, img_size=args.img_size, repeats=args.repeats)
        print(format_section(sec) + "\n", flush=True)
        sections.append(sec)
    if args.out:
        command = "glasszoo bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "glasszoo bench"
        atomic_write_text(Path(args.out), write_markdown(sections, command))
        print(f"bench: wrote {args.out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="glasszoo",
        description="Train interpretable and black-box models side by side on one split, explain them and measure "
                    "the interpretability-accuracy trade-off.",
    )
    parser.add_argument("--version", action="version", version=f"glasszoo {package_version()}")
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

    p = sub.add_parser("explain", help="explain cases of a finished run (or new images) with one of its models",
                       description="Reload a trained model of RUN_DIR (no retraining) and write, per case, a figure "
                                   "of its explanation: for a prototype network the nearest prototype cases with "
                                   "their points, for other models their heatmaps. Figures go to "
                                   "RUN_DIR/explanations/<model>/ unless --out is given.")
    p.add_argument("run_dir", help="a run directory written by 'glasszoo run'")
    p.add_argument("--model", help="the model to explain with (default: the run's only model)")
    p.add_argument("--case", action="append", default=[], metavar="CASE_ID",
                   help="a case id of the run's data (see RUN_DIR/splits.csv); repeatable")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="an image file (PNG, DICOM, NIfTI, ...) of the models' size and channels; repeatable")
    p.add_argument("--resize", action="store_true", help="resize --image files to the models' input size")
    p.add_argument("--top-k", type=int, default=3, help="prototypes shown per case (default 3)")
    p.add_argument("--out", help="folder for the figures (default RUN_DIR/explanations/<model>)")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("bench", help="measure what the zoo's operations cost, as ratios to a plain forward pass",
                       description="Time the zoo's operations in one process (medians after a warm-up) and print "
                                   "a table per section; with --out also write it as Markdown (docs/performance.md).")
    p.add_argument("--only", help="comma-separated sections to run (default: all)")
    p.add_argument("--n-cases", type=int, default=2000, help="synthetic cases to generate (default 2000)")
    p.add_argument("--img-size", type=int, default=48, help="image side in pixels (default 48)")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per operation (default 3)")
    p.add_argument("--out", help="write the Markdown report here, e.g. docs/performance.md")
    p.set_defaults(func=_cmd_bench)

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
