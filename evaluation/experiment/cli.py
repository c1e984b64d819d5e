"""The ``glasszoo`` command line.

Each command imports what it runs when it runs (``# heavy:`` beside those imports): ``glasszoo report`` or
``glasszoo models`` must not wait for Lightning, captum and pyradiomics to load.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from pathlib import Path

import numpy as np

from glasszoo.evaluation.results import (
    format_explanations_markdown,
    format_markdown,
    format_surrogates_markdown,
    format_table,
)
from glasszoo.models.errors import ConfigError, DataError, GlasszooError
from glasszoo.training.atomic import atomic_write_text
from glasszoo.training.duplicates import format_duplicate_report
from glasszoo.training.rundir import RunDir, package_version, safe_filename


def _failed(run_dir: Path) -> int:
    """Exit status of a finished run: 1 (and the failed models named) when a model failed, else 0."""
    from glasszoo.evaluation.experiment.runner import failures  # heavy: the runner (Lightning, captum)

    failed = failures(run_dir)
    for name, f in failed.items():
        print(f"glasszoo: error: model '{name}' failed: {f['error']}", file=sys.stderr)
    if failed:
        print(f"glasszoo: the other models' results and the report are in {run_dir}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_run(args: argparse.Namespace) -> int:
    from glasszoo.evaluation.experiment.config import load_config  # heavy: validates models against the registry
    from glasszoo.evaluation.experiment.runner import run_experiment  # heavy: Lightning, captum
    from glasszoo.evaluation.experiment.seeds import run_seeds  # heavy: the runner

    cfg = load_config(args.config, args.set)
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be >= 1, got {args.seeds}")
    if args.seeds == 1:
        run_dir = run_experiment(cfg, out=args.out, overwrite=args.overwrite, resume=args.resume)
    else:
        run_dir = run_seeds(cfg, args.seeds, out=args.out, overwrite=args.overwrite, resume=args.resume,
                            vary=args.vary)
    return _failed(run_dir)


def _cmd_audit(args: argparse.Namespace) -> int:
    from glasszoo.evaluation.experiment.audit import run_audit  # heavy: the runner
    from glasszoo.evaluation.experiment.config import load_config  # heavy: the registry

    cfg = load_config(args.config, args.set)
    return _failed(run_audit(cfg, out=args.out, overwrite=args.overwrite, rate=args.rate, size=args.size))


def _cmd_report(args: argparse.Namespace) -> int:
    from glasszoo.evaluation.report import write_report  # heavy: matplotlib

    if not RunDir(args.run_dir).metrics.exists():
        raise DataError(f"{RunDir(args.run_dir).metrics} not found: RUN_DIR must be a directory written by "
                        f"'glasszoo run'")
    print(write_report(args.run_dir, reference=args.reference))
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from glasszoo.models import list_models, model_info  # heavy: torch, timm

    names = list_models(args.pattern)
    if not names:
        print(f"no registered model matches {args.pattern!r}", file=sys.stderr)
        return 1
    w = max(len(n) for n in names)
    for n in names:
        info = model_info(n)
        print(f"{n.ljust(w)}  {info.family:<12} {info.input_kind:<8} "
              f"explains: {', '.join(info.explanations) or 'post hoc only'}"
              f"{'  — ' + info.paper if info.paper and args.verbose else ''}")
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from glasszoo.evaluation.experiment.config import load_config  # heavy: the registry
    from glasszoo.training.data import load_caseset  # heavy: SimpleITK

    cfg = load_config(args.config, args.set)
    cs = load_caseset(cfg.data, seed=cfg.seed)
    summary = cs.summary()
    dups = summary.pop("duplicates", None)
    print(json.dumps(summary, indent=2))
    if dups is not None:
        print(format_duplicate_report(dups))
    return 0


def _cmd_features_study(args: argparse.Namespace) -> int:
    from glasszoo.evaluation.experiment.config import load_config  # heavy: the registry
    from glasszoo.evaluation.experiment.features_study import (  # heavy: pyradiomics and the models
        format_study_markdown,
        run_features_study,
    )

    cfg = load_config(args.config, args.set)
    def listed(value: str | None) -> list[str]:
        return [x.strip() for x in (value or "").split(",") if x.strip()]

    kwargs = {k: v for k, v in (("bin_rules", listed(args.bins)), ("image_types", listed(args.image_types)),
                                ("scorers", listed(args.models))) if v}
    if args.sigma:
        try:
            kwargs["sigma"] = [float(x) for x in listed(args.sigma)]
        except ValueError:
            raise ConfigError(f"--sigma: comma-separated numbers, got {args.sigma!r}") from None
    study = run_features_study(cfg, **kwargs)
    text = format_study_markdown(study)
    print(text)
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(study, indent=2) + "\n")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    path = RunDir(args.run_dir).metrics
    if not path.exists():
        raise DataError(f"{path} not found: RUN_DIR must be a directory written by 'glasszoo run'")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    print(format_markdown(metrics) if args.markdown else format_table(metrics))
    if args.markdown and format_surrogates_markdown(metrics):
        print()
        print(format_surrogates_markdown(metrics))
    if args.explanations:
        print()
        print(format_explanations_markdown(metrics))
    return 0


def _describe(exps: list, class_names: list[str]) -> str:
    """A few lines of text for the terminal: the prediction's evidence, in words."""
    from glasszoo.models import (  # heavy: torch
        ConceptEvidence,
        Counterfactual,
        FeatureAttribution,
        Heatmap,
        PrototypeEvidence,
    )

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
        elif isinstance(e, FeatureAttribution):
            order = sorted(range(len(e.feature_names)), key=lambda j: -abs(float(e.contribution[0, j])))[:5]
            for j in order:
                value = float(e.values[0, j])  # NaN for a term of several features (an interaction)
                shown = "" if np.isnan(value) else f" = {value:.3g}"
                lines.append(f"  feature {e.feature_names[j]}{shown}: {float(e.contribution[0, j]):+.2f}")
        elif isinstance(e, Heatmap):
            lines.append(f"  heatmap '{e.method}' for class {class_names[int(e.target[0])]}")
        elif isinstance(e, Counterfactual):
            lines.append(f"  counterfactual ({e.space}): {e.text(0)}")
    return "\n".join(lines)


def _cmd_explain(args: argparse.Namespace) -> int:
    from glasszoo.evaluation.case_figures import Case, explain_case, pointing_game_scores  # heavy: matplotlib, captum
    from glasszoo.evaluation.experiment.runner import case_of, training_image_lookup  # heavy: the runner
    from glasszoo.evaluation.experiment.saved import open_run  # heavy: the registry, Lightning

    if not args.case and not args.image:
        raise DataError("nothing to explain: give --case CASE_ID (see RUN_DIR/splits.csv) or --image PATH")
    run = open_run(args.run_dir, trust_run=args.trust_run)
    name = args.model
    if name is None:
        if len(run.model_names) != 1:
            raise DataError(f"the run has several models; choose one with --model ({', '.join(run.model_names)})")
        name = run.model_names[0]
    run.spec(name)  # unknown model name -> clear error before the data is rebuilt
    cs = run.caseset
    adapter = run.adapter(name)
    items = []  # (file stem, case)
    for cid in args.case:
        items.append((safe_filename(cid), case_of(cs, adapter, run.case_row(cid))))
    for path in args.image:
        image = run.read_image(path, resize=args.resize, to_grey=args.to_grey)
        items.append((safe_filename(Path(path).stem), Case(x=adapter.inputs_for_image(image, name), image=image)))
    model = run.load_model(name)
    source_image = training_image_lookup(cs)
    scores = pointing_game_scores(run.metrics.get("models", {}).get(name, {}).get("explanation", {}))
    out_dir = Path(args.out) if args.out else run.dir.explanations(name)
    for stem, case in items:
        fig = out_dir / f"{stem}.png"
        exps = explain_case(model, case, cs.class_names, fig, source_image, top_k=args.top_k, scores=scores)
        proba = model.predict_proba(case.x)[0]
        k = int(proba.argmax())
        print(f"{case.case_id or stem}: predicted {cs.class_names[k]} (p = {proba[k]:.2f})"
              + (f", true {cs.class_names[case.label]}" if case.label is not None else "") + f" -> {fig}")
        print(_describe(exps, cs.class_names))
    return 0


def _cmd_flag(args: argparse.Namespace) -> int:
    from glasszoo.evaluation.experiment.edit import add_flag, off_lesion_prototypes  # heavy: the runner
    from glasszoo.evaluation.experiment.saved import open_run  # heavy: the registry, Lightning

    run = open_run(args.run_dir, trust_run=args.trust_run)
    ids = list(args.prototype)
    reason = args.reason
    if args.off_lesion:
        found = off_lesion_prototypes(run, args.model, args.min_inside)
        for f in found:
            print(f"prototype {f['prototype']}: source patch in training case {f['source_case_id']} is "
                  f"{100 * f['inside']:.0f}% inside the lesion")
        ids += [f["prototype"] for f in found]
        reason = reason or f"source patch less than {100 * args.min_inside:.0f}% on the lesion"
    if not ids:
        print(f"no prototype of '{args.model}' to flag", file=sys.stderr)
        return 0
    data = {}
    for j in ids:
        data = add_flag(run, args.model, j, reason=reason, case_id=args.case, flagged=not args.remove)
    n = sum(1 for f in data["flags"] if f["model"] == args.model)
    print(f"{RunDir(args.run_dir).annotations}: {n} prototype(s) of '{args.model}' flagged")
    return 0


def _cmd_edit(args: argparse.Namespace) -> int:
    from glasszoo.evaluation.experiment.edit import edit_run, parse_drops  # heavy: the runner

    drops = parse_drops(args.drop_prototypes, args.run_dir)
    if args.model:
        drops = {m: v for m, v in drops.items() if m in args.model}
    path = edit_run(args.run_dir, drops, out=args.out, overwrite=args.overwrite, trust_run=args.trust_run,
                    log=lambda m: print(m, file=sys.stderr))
    edit = json.loads(RunDir(path).metrics.read_text())["edit"]["models"]
    for name, e in edit.items():
        ci = e["delta_auc_ci"]
        print(f"{name}: prototypes {e['dropped']} off; AUC {e['auc_original']:.3f} -> {e['auc']:.3f} "
              f"(change {e['delta_auc']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}], DeLong p = {e['delong_p']:.3g})")
        for method, pg in e["pointing_game"].items():
            d = pg["delta"]
            print(f"  pointing game ({method}): {pg['original']:.2f} -> {pg['edited']:.2f} "
                  f"(change {d['value']:+.2f} [{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}], {pg['n_cases']} cases)")
    print(f"report: {RunDir(path).report}")
    return _failed(path)


def _cmd_serve(args: argparse.Namespace) -> int:
    from glasszoo.evaluation.experiment.viewer import serve  # heavy: FastAPI, the models

    serve(args.run_dir, host=args.host, port=args.port, trust_run=args.trust_run, max_upload_mb=args.max_upload_mb)
    return 0


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{option}: expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{option}: expected comma-separated positive integers, got {text!r}")
    return values


def _cmd_bench(args: argparse.Namespace) -> int:
    from glasszoo.evaluation.experiment.bench import (  # heavy: Lightning, timm, captum
        SECTIONS,
        bench_command,
        format_section,
        run_section,
        write_markdown,
    )
    if args.only:
        names = [s.strip() for s in args.only.split(",") if s.strip()]
    else:
        names = [n for n, spec in SECTIONS.items() if spec.in_default]
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise ConfigError(f"--only: unknown benchmark section '{unknown[0]}'; sections: {', '.join(SECTIONS)}")
    if args.device not in ("cpu", "cuda", "auto"):
        raise ConfigError(f"--device: must be cpu, cuda or auto, got {args.device!r}")
    for opt in ("n_cases", "img_size", "repeats", "epochs"):
        value = getattr(args, opt)
        if value is not None and value < 1:
            raise ConfigError(f"--{opt.replace('_', '-')}: must be >= 1, got {value}")
    img_sizes = _int_list(args.train_sizes, "--train-sizes") if args.train_sizes else (
        (args.img_size,) if args.img_size else None)
    options = {"n_cases": args.n_cases, "img_size": args.img_size, "repeats": args.repeats, "device": args.device,
               "config": args.config,
               "epochs": args.epochs, "img_sizes": img_sizes,
               "sizes": _int_list(args.scaling_sizes, "--scaling-sizes") if args.scaling_sizes else None}
    out = None if args.out in ("", "-") else Path(args.out)
    command = bench_command(sys.argv[2:] if sys.argv[1:2] == ["bench"] else [])
    sections = []
    for n in names:
        print(f"bench: {n} ...", file=sys.stderr, flush=True)
        sec = run_section(n, **options)
        print(format_section(sec) + "\n", flush=True)
        sections.append(sec)
    if out is not None:
        previous = out.read_text(encoding="utf-8") if out.exists() else None
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, write_markdown(sections, command, previous))
        print(f"bench: wrote {out}", file=sys.stderr)
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
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in its directory: finished models are loaded, not retrained")
    p.add_argument("--seeds", type=int, default=1,
                   help="repeat the run with seeds seed, seed+1, ...; report mean +- sd across them (default 1)")
    p.add_argument("--vary", choices=("training", "all"), default="training",
                   help="with --seeds: what the seeds change: the training only, on the first seed's data, split and "
                        "explained cases, so maps can be compared across seeds (default); or the data and split too")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("audit", help="shortcut audit: train the zoo with a planted marker correlated with the label "
                                     "in train/val and independent in test; write audit.json and the report")
    p.add_argument("config", help="YAML experiment config (any data source), e.g. configs/quickstart.yaml")
    p.add_argument("--rate", type=float, default=0.95,
                   help="train/val probability of the marker for the positive class (absent otherwise; default 0.95)")
    p.add_argument("--size", type=int, help="marker side in pixels (default: image side // 12, at least 2)")
    p.add_argument("--out", help="run directory (default: <output_dir>/<experiment>-audit)")
    p.add_argument("--overwrite", action="store_true", help="allow writing over an existing run directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("report", help="(re)write report.html of a finished run")
    p.add_argument("run_dir", help="a run directory written by 'glasszoo run'")
    p.add_argument("--reference", help="model the paired tests compare against (default: the black box)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'proto*'")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the paper each model follows")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("show", help="print the results table of a finished run")
    p.add_argument("run_dir", help="a run directory (holds metrics.json)")
    p.add_argument("--markdown", action="store_true", help="as a Markdown table (for docs/results.md)")
    p.add_argument("--explanations", action="store_true",
                   help="also every heatmap's quality scores and cost, one Markdown row per model and method")
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
    p.add_argument("--to-grey", action="store_true",
                   help="convert colour --image files to luminance for a grey run (grey scans saved as RGB, with "
                        "three identical channels, and grey images for a colour run are converted without it)")
    p.add_argument("--trust-run", action="store_true",
                   help="open tabular models the run stored as pickles (model.pkl, older runs): a pickle can run "
                        "code when opened, so only for runs you trust")
    p.add_argument("--top-k", type=int, default=3, help="prototypes shown per case (default 3)")
    p.add_argument("--out", help="folder for the figures (default RUN_DIR/explanations/<model>)")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("serve", help="open a finished run in a local web page for clinicians: cases, nearest "
                                     "prototype cases, concepts to correct, maps side by side, flags",
                       description="Start a local web server on a finished run (it reads the run and never retrains "
                                   "on its own) and print its address. The page lists the test cases; for a case it "
                                   "shows every model's prediction and reasons, lets a reader set concepts and see "
                                   "the concept model predict again, upload an image, and flag a prototype (flags "
                                   "go to RUN_DIR/annotations.json, the only file the server writes).")
    p.add_argument("run_dir", help="a run directory written by 'glasszoo run'")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest image upload accepted (default 20 MB)")
    p.add_argument("--trust-run", action="store_true",
                   help="open tabular models the run stored as pickles (older runs): only for runs you trust")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("flag", help="flag prototypes of a run as wrong (RUN_DIR/annotations.json), by number or "
                                    "every one whose source patch lies off the lesion",
                       description="Write reader flags to RUN_DIR/annotations.json (never into the results); "
                                   "'glasszoo edit RUN_DIR --drop-prototypes annotations' then switches them off.")
    p.add_argument("run_dir")
    p.add_argument("--model", required=True, help="the prototype model")
    p.add_argument("--prototype", type=int, action="append", default=[], metavar="J", help="a prototype; repeatable")
    p.add_argument("--off-lesion", action="store_true",
                   help="flag every relevant prototype whose source patch lies mostly off its case's lesion")
    p.add_argument("--min-inside", type=float, default=0.5,
                   help="with --off-lesion: the share of the patch inside the lesion below which it is off (0.5)")
    p.add_argument("--reason", default="", help="why (kept with the flag)")
    p.add_argument("--case", help="the case the reader was looking at (kept with the flag)")
    p.add_argument("--remove", action="store_true", help="remove these flags instead")
    p.add_argument("--trust-run", action="store_true", help="open pickled tabular models (older runs you trust)")
    p.set_defaults(func=_cmd_flag)

    p = sub.add_parser("edit", help="switch flagged prototypes off, refit the last layer only, and write a new run "
                                    "comparing the edited model with the original (AUC and pointing game changes)",
                       description="Load each model named by FLAGS, switch its prototypes off and refit its last "
                                   "layer only (convex; nothing else is retrained), then evaluate the original and "
                                   "the edited model side by side in a new run directory (default RUN_DIR-edit): "
                                   "its report shows the AUC change with its CI and DeLong test and the pointing "
                                   "game change with a paired bootstrap CI.")
    p.add_argument("run_dir")
    p.add_argument("--drop-prototypes", required=True, metavar="FLAGS",
                   help="'annotations' (the run's flags), an annotations file, or MODEL:J,K (';' between models)")
    p.add_argument("--model", action="append", help="edit only these of the flagged models (repeatable)")
    p.add_argument("--out", help="the new run directory (default RUN_DIR-edit, numbered if taken)")
    p.add_argument("--overwrite", action="store_true", help="allow writing over an existing run at --out")
    p.add_argument("--trust-run", action="store_true", help="open pickled tabular models (older runs you trust)")
    p.set_defaults(func=_cmd_edit)

    p = sub.add_parser("bench", help="measure what the zoo costs (throughput ratios, scaling, memory) and write "
                                     "docs/performance.md",
                       description="Run the benchmark sections in one command and print a table per section: "
                                   "training throughput of the pipeline vs a bare PyTorch loop (training), the cost of "
                                   "every explanation method as a ratio to a forward pass (explain), ProtoPNet "
                                   "push vs a forward pass (push), radiomics extraction (radiomics), wall time and "
                                   "peak memory of 'glasszoo run' at growing data sizes (scaling) and of the "
                                   "quickstart (quickstart). Writes the report to --out (merged: sections not run "
                                   "keep their earlier figures). Options left out use each section's defaults.")
    p.add_argument("--only", help="comma-separated sections to run (default: all): training, explain, push, "
                                  "radiomics, scaling, quickstart")
    p.add_argument("--n-cases", type=int, help="synthetic cases of the in-process sections (default 2000)")
    p.add_argument("--img-size", type=int,
                   help="image side in pixels (defaults: push and radiomics 48, training 28 and 64, scaling 64)")
    p.add_argument("--train-sizes", metavar="SIZES", help="image sides of the training section, e.g. 28,64")
    p.add_argument("--scaling-sizes", metavar="NS",
                   help="data sizes N of the scaling section (default 1000,4000,16000)")
    p.add_argument("--epochs", type=int, help="epochs per timed training run (default 1)")
    p.add_argument("--device", default="auto", help="auto (default: cuda when available, else cpu), cpu or cuda")
    p.add_argument("--repeats", type=int, help="timed repeats per operation (default 3; training 5)")
    p.add_argument("--config", help="experiment config of the explain and quickstart sections "
                                    "(default: configs/quickstart.yaml in the current folder)")
    p.add_argument("--out", default="docs/performance.md",
                   help="the Markdown report to write or update (default docs/performance.md; '-' to only print)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("features-study", help="score radiomics settings (bin rule x image types) for a config's "
                                              "glass-box models on the validation split only",
                       description="Extract the config's radiomic table for every bin rule and set of image types, "
                                   "fit each scorer model on the training split (its own internal selection) and "
                                   "print its validation AUC with a 95%% CI. The test split is never read.")
    p.add_argument("config")
    p.add_argument("--bins", help="comma-separated bin rules (default binWidth=8,binWidth=16,binCount=16,binCount=32,"
                                  "binCount=64)")
    p.add_argument("--image-types", help="comma-separated sets of image types joined by '+' (default Original,"
                                         "Original+LoG,Original+Wavelet,Original+LoG+Wavelet)")
    p.add_argument("--sigma", help="LoG sigmas in pixels, comma-separated (default 1,2)")
    p.add_argument("--models", help="comma-separated scorers: model names of the config or registry names "
                                    "(default sparse_logreg,ebm)")
    p.add_argument("--json", help="also write the study as JSON to this file")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=_cmd_features_study)

    p = sub.add_parser("data", help="load the data of a config and print its summary (counts per split and class) "
                                      "and its near-duplicate groups (those across splits and across labels)")
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
    except BrokenPipeError:  # the reader went away (glasszoo data CONFIG | head): stop quietly, as head expects
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the interpreter's own flush at exit does not raise again
        return 141


def entry(argv: list[str] | None = None) -> int:
    """The ``glasszoo`` command: :func:`main`, then the process's objects frozen (``gc.freeze``) so that the
    interpreter's last garbage collection at exit skips them: with torch, Lightning and a finished run in memory that
    collection alone took 2-4 s after the run's last line (``main`` itself, called in-process by tests, frees as
    usual)."""
    code = main(argv)
    sys.stdout.flush()
    sys.stderr.flush()
    gc.freeze()
    return code


if __name__ == "__main__":
    sys.exit(entry())
