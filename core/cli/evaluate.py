"""The CLI's `evaluate` command: metrics of rerankers on labelled queries, whether B's difference
from A is real, how the score scale moved, and what each model costs.

    python -m core evaluate --model BASE --model MERGED --input eval.jsonl
    python -m core evaluate --model BASE --model MERGED --input eval.jsonl --json        # everything, as JSON
    python -m core evaluate … --report out/eval        # also writes out/eval.json and out/eval.html
    python -m core evaluate --model BASE --model out/merged … --card   # the table into out/merged/README.md

The table has a "1st stage" column: the metrics of the input order (the first-stage retriever's
ranking) beside each model's. Below it, one line per metric from the paired test over queries
(core.rerank.significance), the score shift at a threshold (core.rerank.score_shift) and the
cost per model (core.rerank.cost). --json prints Evaluation.to_dict() (see core.rerank.evaluation).
"""
from __future__ import annotations

import json

from core.cli.rerank import items_from, print_metrics, quiet_loading, scoring_options
from core.errors import RerankError
from core.units import human


def evaluate_command(sub, common) -> None:
    parser = sub.add_parser("evaluate", parents=[common],
                            help="metrics, significance, score shift and cost of rerankers on labelled queries")
    scoring_options(parser)
    parser.add_argument("--pool", action="store_true",
                        help="rank each query against every passage of the file, not only its own (retrieval-style)")
    parser.add_argument("--json", action="store_true", help="print everything as one JSON object")
    parser.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap and randomization test")
    parser.add_argument("--resamples", type=int, default=10_000, help="bootstrap / randomization draws (default 10000)")
    parser.add_argument("--threshold", type=float,
                        help="score cut for precision/recall (default: model A's median score of relevant passages)")
    parser.add_argument("--report", metavar="STEM", help="also write STEM.json and STEM.html (self-contained report)")
    parser.add_argument("--card", action="store_true",
                        help="add the comparison table to the last model's README.md (the card of a merge)")
    parser.set_defaults(run=_evaluate)


def _evaluate(args) -> None:
    from core.rerank.compare import pooled
    from core.rerank.cost import load_measured, measure_cost
    from core.rerank.evaluation import evaluate

    if not args.input:
        raise RerankError("evaluate needs --input FILE.jsonl with labels (or pos/neg)")
    items = items_from(args)
    if not any(item.labels for item in items):
        raise RerankError(f"{args.input} has no labels: add \"labels\" or use the pos/neg format")
    if args.pool:
        items = pooled(items)
    _check_targets(args)
    quiet_loading()
    pairs = [(item.query, doc) for item in items if item.labels for doc in item.docs]
    models, costs = [], []
    for ref in args.model:
        reranker, load = load_measured(ref, device=args.device, dtype=args.dtype, kind=args.kind,
                                       max_length=args.max_length)
        models.append(reranker)
        costs.append(measure_cost(reranker, pairs, load=load, batch_size=args.batch_size, max_length=args.max_length))
    result = evaluate(models, items, seed=args.seed, resamples=args.resamples, threshold=args.threshold,
                      batch_size=args.batch_size, max_length=args.max_length, normalize=args.normalize, costs=costs)
    written = []
    if args.report:
        from core.rerank.report import write_report

        written += write_report(result, args.report)
    if args.card:
        from core.io.card import add_evaluation

        written.append(add_evaluation(args.model[-1], result.to_dict()))
    if args.json:
        print(json.dumps(result.to_dict()))
        return
    _print_text(result)
    if written:
        print("\nwrote: " + ", ".join(str(path) for path in written))


def _check_targets(args) -> None:
    """Refuse a --report or --card that cannot be written before any model is loaded."""
    from pathlib import Path

    from core.rerank.report import check_report_stem

    if args.report:
        check_report_stem(args.report)
    if args.card and not (Path(args.model[-1]) / "README.md").is_file():
        raise RerankError(f"--card adds to the model card of a merge, but {args.model[-1]} has no README.md")


def _print_text(result) -> None:
    comparison = result.comparison
    names = [f"model {chr(65 + i)}" for i in range(len(comparison.models))]
    for name, ref, kind in zip(names, comparison.models, comparison.kinds):
        print(f"{name}: {ref} ({kind})")
    passages = sum(len(q.rows) for q in comparison.queries)
    print(f"{len(result.queries)} labelled queries, {passages} passages\n")
    print_metrics(comparison, names, result.baseline)
    if result.verdicts:
        print("\nB vs A, paired over queries (bootstrap 95% CI, randomization p):")
        for line in result.verdicts.values():
            print("  " + line)
    if result.shift:
        shift = result.shift
        print(f"\nscore shift ({shift.score_label}) at threshold {shift.threshold:.4g}:")
        for name, stats in zip(("A", "B"), shift.at_threshold):
            print(f"  {name}: precision {_share(stats.precision)}, recall {_share(stats.recall)} ({stats.kept} kept)")
        after, fit = shift.after, shift.calibration
        print(f"  B recalibrated onto A's scale (s' = {fit.scale:.4g}·s {fit.shift:+.4g}): "
              f"precision {_share(after.precision)}, recall {_share(after.recall)}")
    for note in result.notes:
        print(f"\nnote: {note}")
    if result.costs:
        print("\ncost:")
        for name, cost in zip(names, result.costs):
            load = f"load {cost.load_s:.2f} s, " if cost.load_s is not None else ""
            print(f"  {name}: {load}{cost.score_s_per_100:.3f} s per 100 pairs, peak {human(cost.peak_bytes)} "
                  f"({cost.peak_source}), {cost.parameters:,} parameters, {cost.dtype} on {cost.device}")


def _share(value: float) -> str:
    return "n/a" if value != value else f"{value:.1%}"  # nan: nothing kept
