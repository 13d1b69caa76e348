"""``pcgraph train``: load the model, resolve its settings and the flags once into a ``Config``,
build the network, check shapes and the init plan before compiling, then ``fit`` with a
``Recorder`` writing the run directory, and print a summary.

Its options are ``_cli_options.configure_train``; the run directory rules are ``_cli_run_dir``.
Nothing here imports JAX at module level.

Exit status: 0 success; 1 the model file has errors, or training diverged; 2 a usage, data,
shape or checkpoint problem. Errors are one clear message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from ._cli_common import EXIT_MODEL, EXIT_OK, EXIT_USAGE, CliError, err, load_model, reporting
from ._cli_record import Progress, Recorder
from ._cli_run_dir import (CHECKPOINT, METRICS, TRAJECTORY, append_jsonl, check_resumable,
                           jsonable, refuse_overwrite, resume_options, rewrite_metrics,
                           start_fresh)

# flag, value, accepted: checked before anything is resolved
_RANGES = (("--epochs", "epochs", lambda v: v >= 1),
           ("--batch-size", "batch_size", lambda v: v >= 1),
           ("--steps", "steps", lambda v: v >= 0),
           ("--fraction", "fraction", lambda v: 0 < v <= 1),
           ("--val-fraction", "val_fraction", lambda v: 0 <= v < 1),
           ("--activity-lr", "activity_lr", lambda v: v > 0),
           ("--weight-lr", "weight_lr", lambda v: v >= 0),
           ("--weight-decay", "weight_decay", lambda v: v >= 0))


def run_train(args: argparse.Namespace) -> int:
    return reporting(_train, args)


def _train(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    mesh = device_mesh(args)
    primary = mesh is None or _process_index() == 0  # only process 0 writes the run directory
    model = load_model(args.file)
    from ._run import default_dir

    out = Path(args.out or default_dir(model.name, args.algorithm))
    cli = {k: getattr(args, k, None) for k in TRAJECTORY}
    cli["steps_per_dispatch"] = getattr(args, "steps_per_dispatch", None)  # not a trajectory option
    cli["data_dir"] = args.data_dir
    meta = resume_options(cli, out / CHECKPOINT) if args.resume else None
    epochs = args.epochs if args.epochs is not None else (meta or {}).get("cli", {}).get("epochs")
    for flag, key, ok in _RANGES:
        v = epochs if key == "epochs" else cli[key]
        if v is not None and not ok(v):
            raise CliError(f"{flag} {v} is out of range")
    q, tq = cli["query"] or "train", cli["test_query"] or "test"
    if q not in {x.name for x in model.queries}:
        raise CliError(f"model {model.name} has no query {q!r}; it has: "
                       + ", ".join(x.name for x in model.queries))
    seed = cli["seed"] = int(cli["seed"] if cli["seed"] is not None else model.settings.get("seed"))
    config = _resolve(model, cli, epochs)
    ds = _load_data(cli["data"], cli["data_dir"], float(cli["fraction"] or 1.0), seed,
                    bool(args.download), config.record["normalize"],
                    mmap=mesh is not None and _process_count() > 1,
                    val_fraction=float(cli["val_fraction"] or 0.0))
    _preflight(model, cli, epochs, seed)  # limits and memory, before anything is allocated
    net, like_carry = _build(model, ds, config, q, tq, seed)
    data, eval_kw = ds, {}
    if cli["mask"]:
        data, eval_data = _masked(net, ds, cli, q, tq, seed)
        eval_kw = {"eval_data": eval_data}
    cli["epochs"] = config.record["epochs"]
    from ._fit import model_hash

    mhash = model_hash(model)
    if primary and meta is None and ((out / CHECKPOINT).exists() or (out / METRICS).exists()):
        refuse_overwrite(out, model.name, mhash, cli, bool(args.overwrite))
    state = None
    if meta is not None:
        check_resumable(meta, config.record, mhash, out / CHECKPOINT)
        net, state = _resumed(out / CHECKPOINT, net, config, like_carry)
        if primary:
            rewrite_metrics(out / METRICS, state.epoch)
    elif primary:
        start_fresh(out)

    from ._format import format_model

    identity = {"seed": seed, "model": model.name, "model_file": args.file, "model_hash": mhash,
                "model_text": format_model(model), "settings": dict(model.settings.as_dict())}
    recorder = Recorder(
        Progress(enabled=not args.quiet and primary), out, primary=primary, identity=identity,
        data=cli["data"], cli=cli, config=config.record,
        steps_per_epoch=len(ds.x_train) // config.record["batch_size"],
        collapsed=[m["collapse"] for m in (state.history if state else ()) if m.get("collapse")],
        checkpoint=str(out / CHECKPOINT) if meta is not None else None)
    result = _fit(net, data, config, recorder, out, model.name, primary,
                  query=q, test_query=tq, seed=seed, state=state, mesh=mesh, **eval_kw)
    if result is None:
        return EXIT_MODEL  # diverged; reported
    if not primary:
        return EXIT_OK
    summary = _summary(result, recorder, model.name, cli["data"], config.record, out,
                       resumed_from=state.epoch if state else 0, mesh=mesh,
                       wall_time_s=time.perf_counter() - t_start)
    if mesh is not None:
        from ._rows import Rows

        summary["rows_on_demand"] = isinstance(ds.x_train, Rows)  # data.load(mmap=True)
    _report(summary, args.json, recorder.collapsed)
    return EXIT_OK


def _resolve(model, cli: dict, epochs):
    """The one resolution of the model's settings and the flags into the run's ``Config``."""
    from ._config import resolve_config
    from ._run import RunError, init_kw

    try:
        return resolve_config(
            model.settings, algorithm=cli["algorithm"], **init_kw(cli), steps=cli["steps"],
            activity_lr=cli["activity_lr"], weight_lr=cli["weight_lr"],
            weight_optimizer=cli["optimizer"], init=cli["init"], solver=cli["solver"],
            epochs=epochs, batch_size=cli["batch_size"], weight_decay=cli["weight_decay"],
            activity_optimizer=cli["activity_optimizer"],
            parameterisation=cli["parameterisation"], normalize=cli["normalize"],
            precision=cli["precision"], steps_per_dispatch=cli.get("steps_per_dispatch"))
    except (RunError, ValueError) as e:
        raise CliError(str(e)) from None


def _build(model, ds, config, q: str, tq: str, seed: int):
    """The network, with its binding to the data, and a fresh initialiser carry (the init plan
    and its options checked) -- all before anything is compiled."""
    from . import data as D
    from ._binding import BindingError, bind, prepare_dataset
    from ._diagnostics import PcgError, relabel
    from ._fit import fresh_carry
    from ._limits import CLI_LABELS
    from ._network import build

    try:
        net = build(model, seed=seed, parameterisation=config.record["parameterisation"])
    except (ValueError, KeyError) as e:
        raise CliError(f"cannot build {model.name}: {e}", EXIT_MODEL) from None
    try:
        prepare_dataset(net, ds, bind(net, q, tq))
    except (BindingError, D.DataShapeError, KeyError) as e:
        raise CliError(str(e).strip('"')) from None
    try:
        carry = fresh_carry(net, query=q, init=config.init, batch_size=config.batch_size,
                            seed=seed, algorithm=config.algorithm)
    except PcgError as e:
        print(relabel(e, CLI_LABELS).render(), file=sys.stderr)
        options = all(d.span.line <= 0 for d in e.diagnostics)  # a bad flag, not the file
        raise CliError(f"cannot initialise {model.name}: see above",
                       EXIT_USAGE if options else EXIT_MODEL) from None
    except (ValueError, KeyError) as e:
        raise CliError(str(e).strip('"')) from None
    return net, carry


def _masked(net, ds, cli: dict, q: str, tq: str, seed: int):
    """``--mask``: the training and test splits as ``{node: array}`` dicts, each with the mask
    beside the data node where its query clamps it ``where`` a mask (``pcgraph._masks``)."""
    import numpy as np

    from ._binding import bind
    from ._masks import MaskSpecError, element_masks, parse_mask

    try:
        spec = parse_mask(cli["mask"])
    except MaskSpecError as e:
        raise CliError(str(e)) from None
    names = {x.name for x in net.plan.queries}
    part = {n: dict(net.plan.query(n).partial) for n in (q, tq) if n in names}
    if not any(part.values()):
        raise CliError(f"--mask: neither query {q!r} nor {tq!r} clamps a node `where` a mask "
                       "(give the masked query with --query or --test-query)")
    if cli["val_fraction"]:
        raise CliError("--mask does not combine with --val-fraction")
    b = bind(net, q, tq if tq in names else None)
    if not b.generative:
        raise CliError("--mask trains generative models (one data node, no label node)")
    other = [n for p in part.values() for n in p if n != b.input]
    if other:
        raise CliError(f"--mask masks the data node {b.input!r}, but a query clamps "
                       f"{other[0]!r} where a mask")
    shape = net.node_shape(b.input)

    def split(x, query: str, k: int):
        out = {b.input: np.asarray(x).reshape(len(x), *shape)}
        m = part.get(query, {}).get(b.input)
        if m is not None:
            try:
                mk = element_masks(spec, len(x), tuple(ds.input_shape), seed, k)
            except MaskSpecError as e:
                raise CliError(str(e)) from None
            out[m] = mk.reshape(len(x), *shape)
        return out

    return split(ds.x_train, q, 0), (split(ds.x_test, tq, 2) if tq in names else False)


def _resumed(ckpt_path: Path, net, config, like_carry):
    """The network and ``TrainState`` of the checkpoint ``--resume`` continues."""
    import equinox as eqx

    from ._checkpoint import CheckpointError, load
    from ._fit import TrainState

    like_opt = config.weight_optimizer.init(eqx.filter(net, eqx.is_inexact_array))
    try:
        net, opt_state, carry, meta = load(ckpt_path, net, like_opt, like_carry)
    except CheckpointError as e:
        raise CliError(str(e)) from None
    return net, TrainState.from_meta(opt_state, carry, meta)


def _fit(net, ds, config, recorder: Recorder, out: Path, name: str, primary: bool, **kw):
    """``fit`` with the recorder as callback; None after a divergence (reported and logged)."""
    from . import data as D
    from ._collapse import CollapseWarning
    from ._divergence import TrainingDiverged
    from ._fit import fit

    try:
        with warnings.catch_warnings():  # printed by the recorder instead
            warnings.simplefilter("ignore", CollapseWarning)
            return fit(net, ds, config, callback=recorder, **kw)
    except TrainingDiverged as e:
        if recorder.progress.tty:
            sys.stderr.write("\n")
        append_jsonl(out / METRICS if primary else Path(os.devnull),
                     [{"type": "diverged", "epoch": e.epoch, "step": e.step,
                       "nodes": list(e.nodes), "message": str(e)}])
        err(str(e))
        return None
    except (D.DataError, ValueError, KeyError) as e:
        raise CliError(f"{type(e).__name__}: {e}") from None
    except Exception as e:  # out of memory that slipped past the estimate
        if not _out_of_memory(e):
            raise
        raise CliError(f"out of memory while training {name} (the last checkpoint, if "
                       f"any, is in {out}): {str(e).splitlines()[0][:300]}; use a smaller "
                       "--batch-size") from None


def _summary(result, recorder: Recorder, name: str, data: str, cfg: dict, out: Path, *,
             resumed_from: int, mesh, wall_time_s: float) -> dict:
    """The ``--json`` document (fields in ``_cli_options.TRAIN_JSON_FIELDS``)."""
    final = result.final
    summary = {
        "model": name, "data": data, "algorithm": cfg["algorithm"], "seed": recorder.identity["seed"],
        "epochs": result.state.epoch, "steps": result.state.step,
        "steps_per_epoch": result.steps_per_epoch, "batch_size": cfg["batch_size"],
        "test_accuracy": final.get("test_accuracy"), "train_accuracy": final.get("train_accuracy"),
        "test_mse": final.get("test_mse"),
        "final_energy": jsonable(final.get("energy")),
        "final_loss": jsonable(final.get("train_loss")),
        "smm_per_update": result.smm_per_update,
        "total_smm": result.smm_per_batch * result.state.step,
        "ms_per_step": final.get("ms_per_step"),
        "train_time_s": result.state.wall_time_s,
        "wall_time_s": wall_time_s,
        "out_dir": str(out), "checkpoint": recorder.checkpoint, "resumed_from": resumed_from,
        "collapse": recorder.collapsed[0] if recorder.collapsed else None,
    }
    if mesh is not None:
        import jax

        summary["devices"] = int(mesh.devices.size)
        summary["mesh"] = dict(mesh.shape)
        summary["processes"] = jax.process_count()
    summary.update(_validation_summary(result, recorder.best))
    return summary


def _validation_summary(result, best_path: Path) -> dict:
    """The --json fields of validation (none without --val-fraction)."""
    from ._validation import val_metric

    k = val_metric(result.final)
    if k is None:
        return {}
    best = next((m for m in result.history if m.get("epoch") == result.best_epoch), {})
    return {k: result.final[k], "best_epoch": result.best_epoch, "best_val": best.get(k),
            "best_checkpoint": str(best_path) if best_path.exists() else None}


def _report(summary: dict, as_json: bool, collapsed: list) -> None:
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    acc = summary["test_accuracy"]
    res = (f"test accuracy {100 * acc:.2f}%" if acc is not None else
           f"test mse {summary['test_mse']:.4g}" if summary["test_mse"] is not None else "done")
    print(f"{summary['model']} on {summary['data']}: {res} after {summary['epochs']} epoch(s) "
          f"({summary['train_time_s']:.1f} s training, {summary['smm_per_update']:g} SMM per "
          f"update); run in {summary['out_dir']}")
    if collapsed:
        print(f"warning: {collapsed[0]['message']}")


def device_mesh(args: argparse.Namespace):
    """Start jax.distributed when asked and return the mesh for ``fit`` (None: one device).
    Before anything else touches JAX."""
    coord, nproc, pid = (getattr(args, k, None) for k in
                         ("coordinator", "num_processes", "process_id"))
    devices, mesh = getattr(args, "devices", None), getattr(args, "mesh", None)
    if devices is not None and mesh is not None:
        raise CliError("give --devices N or --mesh SPEC, not both")
    if devices is not None and devices < 1:
        raise CliError(f"--devices {devices} is out of range")
    from ._mesh import MeshError, initialize, make_mesh, native_stdout_to_stderr, parse_mesh

    if (coord is not None or nproc is not None or pid is not None
            or getattr(args, "distributed", False) or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        if nproc is not None and nproc < 1:
            raise CliError(f"--num-processes {nproc} is out of range")
        if pid is not None and nproc is not None and not 0 <= pid < nproc:
            raise CliError(f"--process-id {pid} must be in 0..{nproc - 1}")
        try:
            initialize(coord, nproc, pid)
            native_stdout_to_stderr()  # gloo's connection lines must not dirty --json
        except (RuntimeError, ValueError) as e:
            raise CliError(f"cannot start jax.distributed: {e}") from None
        if mesh is None and devices is None:
            import jax

            devices = jax.device_count()
    spec = mesh if mesh is not None else (f"data={devices}" if devices is not None else None)
    if spec is None:
        return None
    try:
        parse_mesh(spec)
        return make_mesh(spec)
    except MeshError as e:
        raise CliError(str(e)) from None


def _process_index() -> int:
    import jax

    return jax.process_index()


def _process_count() -> int:
    import jax

    return jax.process_count()


def _load_data(name: str, data_dir, fraction: float, seed: int, download: bool = False,
               normalize: str | None = None, mmap: bool = False, val_fraction: float = 0.0):
    from . import data as D

    try:
        return D.load(name, data_dir=data_dir, fraction=fraction, seed=seed, download=download,
                      normalize=normalize or "standardize", mmap=mmap, val_fraction=val_fraction)
    except (D.DataError, ValueError, OSError) as e:
        raise CliError(str(e)) from None


def _preflight(model, cli: dict, epochs, seed) -> None:
    """Steps, epochs, batch size, seed and the memory of a training step, checked against the
    limits (``pcgraph._limits``) before the network is built; errors name the CLI flag."""
    from ._diagnostics import PcgError, relabel
    from ._limits import CLI_LABELS, training_diagnostics

    s = model.settings
    bad = training_diagnostics(
        model, steps=cli["steps"] if cli["steps"] is not None else s.get("steps"),
        epochs=epochs if epochs is not None else s.get("epochs"),
        batch_size=cli["batch_size"] if cli["batch_size"] is not None else s.get("batch_size"),
        seed=seed)
    if bad:
        print(relabel(PcgError(bad), CLI_LABELS).render(), file=sys.stderr)
        raise CliError(f"cannot train {model.name}: see above")


def _out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "RESOURCE_EXHAUSTED" in str(e) or (
        "Unable to allocate" in str(e))
