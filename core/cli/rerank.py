"""The CLI's `rerank` command (scores per query) and the options and input it shares with `evaluate`
(core/cli/evaluate.py).

    python -m core rerank --model A [--model B] --query Q --doc D1 --doc D2 [--json]
    python -m core rerank --model A --model B --input eval.jsonl --normalize

Scores are raw model outputs (logits for cross-encoders and LLM rerankers, cosine for
bi-encoders) unless --normalize (sigmoid of logits). With --json, `rerank` prints
{"models": [{"model", "kind", "scores": [[per doc] per query]}], "metrics"?: {name: [per model]}}.
"""
from __future__ import annotations

import json

from core.devices import DEVICE_HELP
from core.errors import RerankError
from core.rerank.model import KINDS
from core.units import DTYPES


def scoring_options(parser) -> None:
    parser.add_argument("--model", action="append", required=True,
                        help="model folder or Hub id; repeat to compare (the first is the reference)")
    parser.add_argument("--input", help="JSONL: {query, docs, labels?} or {query, pos, neg} per line")
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--dtype", choices=list(DTYPES),
                        help="default: float32 on CPU, float16 on GPU (bfloat16 for LLMs)")
    parser.add_argument("--kind", choices=KINDS, help="default: detected")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (default 32)")
    parser.add_argument("--max-length", type=int, help="tokens per pair (default 512; bi-encoders: their own)")
    parser.add_argument("--normalize", action="store_true", help="sigmoid of the logits, in (0, 1)")


def rerank_command(sub, common) -> None:
    parser = sub.add_parser("rerank", parents=[common], help="score passages for queries with one or more models")
    scoring_options(parser)
    parser.add_argument("--query", help="one query (with --doc)")
    parser.add_argument("--doc", action="append", help="a passage for --query; repeat for more")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.set_defaults(run=_rerank)


def _rerank(args) -> None:
    result = _run(args, items_from(args))
    if args.json:
        scores = [[[row.scores[m] for row in q.rows] for q in result.queries] for m in range(len(result.models))]
        out = {"models": [{"model": ref, "kind": kind, "scores": s}
                          for ref, kind, s in zip(result.models, result.kinds, scores)]}
        if result.metrics:
            out["metrics"] = result.metrics
        print(json.dumps(out))
        return
    names = [f"model {chr(65 + i)}" for i in range(len(result.models))]
    for name, ref, kind in zip(names, result.models, result.kinds):
        print(f"{name}: {ref} ({kind})")
    for query in result.queries:
        print(f"\nquery: {query.query}")
        header = ["#"] + [f"{n[-1]} {result.score_label}" for n in names] + [f"{n[-1]} rank" for n in names]
        if len(names) > 1:
            header += ["delta", "moved"]
        print("  ".join(f"{h:>12}" for h in header) + "  passage")
        for i, row in enumerate(query.rows, start=1):
            cells = [str(i)] + [f"{s:.4f}" for s in row.scores] + [str(r) for r in row.ranks]
            if len(names) > 1:
                cells += [f"{row.delta:+.4f}", f"{row.rank_change:+d}"]
            print("  ".join(f"{c:>12}" for c in cells) + "  " + _short(row.doc))
        for name, tau, overlap in zip(names[1:], query.kendall_tau, query.top_k_overlap):
            print(f"{name} vs A: Kendall tau {tau:.3f}, top-10 overlap {overlap:.0%}")
    if result.metrics:
        print()
        print_metrics(result, names)


def print_metrics(result, names, baseline: dict[str, float] | None = None) -> None:
    """The metrics table (a "first stage" column when `baseline` gives the input order's metrics)
    and each model's mean Kendall tau and top-10 overlap against model A."""
    from core.rerank.compare import mean_or_nan

    header = f"{'metric':<12}" + (f"{'1st stage':>10}" if baseline else "") + "".join(f"{n:>10}" for n in names)
    print(header + (f"{'B − A':>10}" if len(names) == 2 else ""))
    for metric, values in result.metrics.items():
        line = f"{metric:<12}" + (f"{baseline[metric]:>10.4f}" if baseline else "") + "".join(f"{v:>10.4f}" for v in values)
        print(line + (f"{values[1] - values[0]:>+10.4f}" if len(names) == 2 else ""))
    for i, name in enumerate(names[1:]):
        tau = mean_or_nan([q.kendall_tau[i] for q in result.queries])
        overlap = mean_or_nan([q.top_k_overlap[i] for q in result.queries])
        print(f"{name} vs A: mean Kendall tau {tau:.3f}, mean top-10 overlap {overlap:.0%}")


def items_from(args):
    from core.rerank.compare import QueryItem, read_queries

    query, docs = getattr(args, "query", None), getattr(args, "doc", None)  # evaluate takes --input only
    if args.input:
        if query or docs:
            raise RerankError("give either --input FILE.jsonl or --query with --doc, not both")
        return read_queries(args.input)
    if not query or not docs:
        raise RerankError("give --query with at least one --doc, or --input FILE.jsonl")
    return [QueryItem(query, docs)]


def quiet_loading() -> None:
    """Silence transformers' load reports and "Loading weights" bars, which would bury the command's own
    output on stderr (rerank, evaluate, weights, sweep load models; their errors still print)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def _run(args, items):
    from core.rerank.compare import compare
    from core.rerank.model import load_reranker

    quiet_loading()
    models = [load_reranker(ref, device=args.device, dtype=args.dtype, kind=args.kind) for ref in args.model]
    return compare(models, items, batch_size=args.batch_size, max_length=args.max_length, normalize=args.normalize)


def _short(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
