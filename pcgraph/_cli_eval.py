"""``pcgraph eval``: a checkpoint (or run directory) evaluated on a data set's split, through
``_run.load_run`` and ``Run.evaluate``. Nothing here imports JAX at module level."""

from __future__ import annotations

import argparse
import json
import sys

from ._cli_common import EXIT_OK, CliError, load_model, reporting
from ._cli_options import add_device_options
from ._cli_run_dir import jsonable_dict


def configure_eval(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("--json prints {model, algorithm, data, checkpoint, epoch, query, split, n, "
                "SPLIT_accuracy, SPLIT_mse, settings; with --devices/--mesh: devices, mesh, "
                "processes}\n(SPLIT is test, val or train; the text output "
                "first names the run's model, algorithm and settings)"
                "\nExit status: 0 ok, 1 model errors, 2 usage/data/checkpoint errors.")
    p.add_argument("file", metavar="FILE", help=".pcg model file")
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="checkpoint file (or a run directory holding checkpoint.eqx)")
    p.add_argument("--data", metavar="NAME", help="data set (default: the one trained on)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the data set's files")
    p.add_argument("--download", action="store_true", help="fetch a missing data set (checksummed)")
    p.add_argument("--query", help="evaluation query (default: the training run's, or test)")
    p.add_argument("--batch-size", type=int, default=256, metavar="B")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="val: the validation split the run held out (--val-fraction)")
    p.add_argument("--json", action="store_true", help="print a JSON result on stdout")
    add_device_options(p)


def run_eval(args: argparse.Namespace) -> int:
    return reporting(_eval, args)


def _eval(args: argparse.Namespace) -> int:
    from ._cli_train import device_mesh

    mesh = device_mesh(args)  # each evaluation batch split over the mesh's devices
    model = load_model(args.file)
    from ._run import RunError, checkpoint_path, describe, load_run

    ckpt = checkpoint_path(args.checkpoint)
    if not ckpt.exists():
        raise CliError(f"{ckpt}: no such checkpoint")
    try:
        run = load_run(ckpt, model=model)
    except RunError as e:
        raise CliError(str(e)) from None
    from ._fit import model_hash

    if run.meta.get("model_hash") and run.meta["model_hash"] != model_hash(model):
        print(f"note: {args.file} changed since {ckpt} was written (its arrays still fit)",
              file=sys.stderr)
    saved = run.cli
    name = args.data or saved.get("data")
    if not name:
        raise CliError("give --data NAME (the checkpoint does not say which data set it used)")
    from . import data as D
    from ._binding import BindingError

    try:
        ds = run.load_data(name, data_dir=args.data_dir, download=bool(args.download))
    except (D.DataError, ValueError, OSError) as e:
        raise CliError(str(e)) from None
    query = args.query or run.test_query
    if args.split == "val" and ds.x_val is None:
        raise CliError(f"{ckpt} was trained without a validation split (no --val-fraction); "
                       "use --split test or train")
    try:
        res = run.evaluate(ds, query=query, batch_size=args.batch_size, split=args.split,
                           mesh=mesh)
    except (BindingError, D.DataError, ValueError, KeyError) as e:
        raise CliError(str(e).strip('"')) from None
    split = args.split
    out = {"model": model.name, "algorithm": run.algorithm, "data": name, "checkpoint": str(ckpt),
           "epoch": run.epoch, "query": res.get("query", query), "split": split, "n": res.get("n"),
           f"{split}_accuracy": res.get("accuracy"), f"{split}_mse": res.get("mse"),
           "settings": jsonable_dict(run.settings)}
    if mesh is not None:
        import jax

        out.update(devices=int(mesh.devices.size), mesh=dict(mesh.shape),
                   processes=jax.process_count())
        if jax.process_index() != 0:  # only process 0 reports
            return EXIT_OK
    if args.json:
        print(json.dumps(out, indent=2))
        return EXIT_OK
    print(f"run {ckpt.parent}: {describe(run.meta)}")
    if out[f"{split}_accuracy"] is not None:
        print(f"{model.name} on {name} ({split}, {out['n']} examples): accuracy "
              f"{100 * out[f'{split}_accuracy']:.2f}%")
    else:
        print(f"{model.name} on {name} ({split}, {out['n']} examples): reconstruction mse "
              f"{out[f'{split}_mse']:.5g}")
    return EXIT_OK
