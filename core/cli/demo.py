"""The CLI's `demo` command: build the demo models with a progress bar.

    python -m core demo [--models-dir models] [--seed 0] [--force] [--device cpu] [--threads N]

Prints one line per model (skipped / saved, with its final loss and the build's time left) and the total time; the
models are what core.demo.build builds. Ctrl-C stops after the current step without a half model.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from core.devices import DEVICE_HELP
from core.errors import MergeCancelled
from core.progress import eta_text


def demo_command(sub, common) -> None:
    parser = sub.add_parser("demo", parents=[common], help="build the demo models from the packaged MiniLM",
                            description="Train two domain embedders and three cross-encoders (general, cooking, "
                                        "software) from the packaged all-MiniLM-L6-v2 into MODELS_DIR/demo/.")
    parser.add_argument("--models-dir", help="where models live (default: the app's models/ folder)")
    parser.add_argument("--seed", type=int, default=0, help="seed of data order, sampling and dropout (default 0)")
    parser.add_argument("--force", action="store_true", help="rebuild models that already exist")
    parser.add_argument("--device", default="cpu", help=DEVICE_HELP)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(run=_demo)


def _demo(args) -> None:
    import torch
    import transformers
    from tqdm import tqdm

    from core.app.workspace import default_workspace
    from core.demo.build import DEMO_FOLDER, demo_events
    from core.merge.engine import check_seed

    transformers.logging.disable_progress_bar()  # "Loading weights" bars would break the training bar
    if args.threads:
        torch.set_num_threads(args.threads)
    models_dir = Path(args.models_dir) if args.models_dir else default_workspace(hosted=False).models_dir
    started = time.monotonic()
    bar = None
    try:
        for event in demo_events(models_dir, seed=check_seed(args.seed), force=args.force, device=args.device):
            if event.state == "training":
                if args.quiet:
                    continue
                if bar is None:
                    bar = tqdm(total=event.total, desc=event.model, unit="step", file=sys.stderr)
                bar.update(event.step - bar.n)
                bar.set_postfix_str(f"loss {event.loss:.4f}, build {eta_text(event.eta)}", refresh=False)
                continue
            if bar is not None:
                bar.close()
                bar = None
            left = f", build {eta_text(event.eta)}" if event.done < event.planned else ""
            print(event.line() + (f", last loss {event.loss:.4f}, {event.elapsed:.0f} s so far{left}"
                                  if event.state == "saved" else " (exists; --force rebuilds it)"))
    except KeyboardInterrupt:
        raise MergeCancelled("demo build interrupted; the models saved so far are kept, none is half written") from None
    finally:
        if bar is not None:
            bar.close()
    print(f"demo models in {(models_dir / DEMO_FOLDER).resolve()} ({time.monotonic() - started:.0f} s, "
          f"{torch.get_num_threads()} threads)")
