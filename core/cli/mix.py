"""The CLI's data-driven mixing commands: `weights` (LM-Cocktail weights from examples) and `sweep` (α curve).

    python -m core weights --model A --model B --model C --examples few.jsonl [--tau 5] [--recipe mix.yml]
    python -m core sweep --model-a base/ --model-b tuned/ --set assets/demo/cooking/eval.jsonl \\
                         --set general=assets/demo/general/eval.jsonl [--alphas 0,0.25,0.5,0.75,1]
                         [--method dare_linear --seeds 5 [--density 0.5]]

`weights` prints each model's loss and weight (and `--json`: {"models", "kind", "losses",
"weights", "tau"}); `--recipe FILE` also writes the linear recipe with those weights. `sweep` prints one row per α with
nDCG@10 and MRR@10 per set (`--json`: SweepResult.to_dict(), which docs/render_sweep.py turns
into a PNG); with `--seeds K` and a random method (dare_linear, della_linear) each α is merged with
seeds 0 … K−1, the table shows the mean and a second table the spread (min, max, 95% interval).
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from core.cli.rerank import quiet_loading
from core.cocktail.spread import MAX_SEEDS, seeds_apply
from core.cocktail.sweep import DEFAULT_ALPHAS, DEFAULT_METHOD, MODES, SWEEP_DENSITY, SWEEP_FORMULAS, SWEEP_METHODS
from core.cocktail.weights import DEFAULT_TAU
from core.devices import DEVICE_HELP
from core.units import DTYPES


def weights_command(sub, common) -> None:
    parser = sub.add_parser("weights", parents=[common], help="merge weights from a few examples (LM-Cocktail)",
                            description="Each model's loss on the examples, and weights = softmax(-loss / tau).")
    parser.add_argument("--model", action="append", required=True, help="candidate model; repeat for each")
    parser.add_argument("--examples", required=True,
                        help='JSONL: {"input", "output"} (decoders) or {"query", "pos", "neg"} (embedders, rerankers)')
    parser.add_argument("--tau", type=float, default=DEFAULT_TAU,
                        help=f"softmax temperature (default {DEFAULT_TAU:g}, as LM-Cocktail)")
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass")
    parser.add_argument("--max-length", type=int, help="tokens per pair (decoders: per example, default 2048)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--recipe", metavar="FILE", help="also write a linear recipe with these weights (YAML)")
    parser.set_defaults(run=_weights)


def _weights(args) -> None:
    from core.cocktail.weights import data_weights, read_examples
    from core.errors import OutputError
    from core.merge.recipe import recipe_from_dict, to_yaml

    quiet_loading()
    result = data_weights(args.model, read_examples(args.examples), tau=args.tau, device=args.device,
                          batch_size=args.batch_size, max_length=args.max_length)
    print(json.dumps(asdict(result)) if args.json else result.table())
    if args.recipe:
        recipe = recipe_from_dict({"merge_method": "linear", "models": [
            {"model": model, "parameters": {"weight": round(weight, 6)}}
            for model, weight in zip(result.models, result.weights)]})
        try:
            Path(args.recipe).write_text(to_yaml(recipe), encoding="utf-8")
        except OSError as error:
            raise OutputError(f"cannot write the recipe {args.recipe}: {error.strerror or error}") from None


def sweep_command(sub, common) -> None:
    parser = sub.add_parser("sweep", parents=[common], help="measure the merge of two models at α = 0 … 1",
                            description="Merge A and B at each α and print nDCG@10 / MRR@10 on each labelled set.")
    parser.add_argument("--model-a", required=True, help="the model at α = 0 (e.g. the base or general model)")
    parser.add_argument("--model-b", required=True, help="the model at α = 1 (e.g. the fine-tune)")
    parser.add_argument("--set", action="append", required=True, metavar="[NAME=]FILE",
                        help="labelled JSONL ({query, docs, labels} or {query, pos, neg}); repeat for more")
    parser.add_argument("--pool", action="store_true",
                        help="rank each query against every passage of its set, not only its own (retrieval-style)")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS),
                        help="comma-separated α values (default %(default)s)")
    parser.add_argument("--method", default=DEFAULT_METHOD, choices=SWEEP_METHODS,
                        help="; ".join(f"{name}: {formula}" for name, formula in SWEEP_FORMULAS.items()))
    parser.add_argument("--seeds", type=int, default=1, metavar="K",
                        help=f"merge each α with seeds 0 … K−1 and report the spread (1 … {MAX_SEEDS}; "
                             "dare_linear / della_linear only: the other methods are deterministic, one run)")
    parser.add_argument("--density", type=float, default=SWEEP_DENSITY,
                        help="share of B − A that dare_linear / della_linear keep (default %(default)s)")
    parser.add_argument("--mode", default=MODES[0], choices=MODES,
                        help="merge in memory, or stream each merge to a temporary folder (default: auto)")
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--dtype", choices=list(DTYPES), help="default: by device")
    parser.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (default 32)")
    parser.add_argument("--max-length", type=int, help="tokens per pair (default 512; bi-encoders: their own)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.set_defaults(run=_sweep)


def _sweep(args) -> None:
    from core.cocktail.sweep import read_sets, sweep
    from core.errors import RerankError

    try:
        alphas = [float(a) for a in args.alphas.split(",") if a.strip()]
    except ValueError:
        raise RerankError(f"--alphas {args.alphas!r}: write numbers separated by commas, e.g. 0,0.5,1") from None
    sets = read_sets([set_arg(text) for text in args.set], pool=args.pool)
    quiet_loading()
    result = sweep(args.model_a, args.model_b, sets, alphas=alphas, method=args.method,
                   mode=args.mode, device=args.device, dtype=args.dtype, batch_size=args.batch_size,
                   max_length=args.max_length, seeds=args.seeds, density=args.density)
    if args.json:
        print(json.dumps(result.to_dict()))
        return
    print(f"A (α = 0): {result.model_a}\nB (α = 1): {result.model_b}")
    print(f"{result.method} merges, made in {result.mode}")
    print(seeds_line(result) + "\n")
    print(result.table())
    if len(result.seeds) > 1:
        print("\nSpread over the seeds:\n" + result.spread_table())


def seeds_line(result) -> str:
    """What the seeds did: the K seeds each α was merged with, or that the method does not use one."""
    if not seeds_apply(result.method):
        return f"{result.method} is deterministic: seeds do not apply, one merge per α"
    if len(result.seeds) > 1:
        return f"each α merged with seeds 0 … {len(result.seeds) - 1}; the table shows their mean"
    return "one seed (0) per α: --seeds K shows how much the random drop moves the metrics"


def set_arg(text: str) -> tuple[str | None, str]:
    """--set's "[NAME=]FILE" as (NAME, FILE), split at the first '='; (None, text) when there is none,
    or when the whole text is a file (a path may hold '=': `runs/a=1.jsonl`)."""
    name, sep, path = text.partition("=")
    if not sep or not name or Path(text).is_file():
        return None, text
    return name, path
