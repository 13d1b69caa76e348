"""``pcgraph train / eval / draw / plot``: the command-line layer over ``_fit``, ``_checkpoint``,
``_draw`` and ``_plot``.

``register(subparsers)`` adds the four subcommands to an argparse subparsers object (each parser's
``_run`` default is its handler, as ``pcgraph._cli`` expects); ``SUBCOMMANDS`` lists
``name -> (help, "module:configure", "module:run")`` for ``_cli.COMMANDS``. Nothing here imports
JAX at module level: handlers import it when they run.

Exit status: 0 success; 1 the model file has errors, or training diverged; 2 a usage, data,
shape or checkpoint problem. Errors are one clear message on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

from ._errors import Error
from ._registry import ALGORITHMS, INIT_METHODS, SETTINGS

EXIT_OK, EXIT_MODEL, EXIT_USAGE = 0, 1, 2
CHECKPOINT = "checkpoint.eqx"
METRICS = "metrics.jsonl"

TRAIN_JSON_FIELDS = """\
--json prints one JSON object on stdout when training ends:
  model            model name              data           data set name
  algorithm        pc | ipc | bp           seed           seed of parameters and batch order
  epochs           epochs completed        steps          weight updates done in total
  steps_per_epoch  batches per epoch       batch_size     training batch size
  test_accuracy    final test accuracy (0..1; null for generative models)
  train_accuracy   final accuracy on (up to 2048) training examples
  test_mse         reconstruction MSE (generative models; else null)
  final_energy     mean energy F at t=0 over the last epoch
  final_loss       mean output loss over the last epoch
  smm_per_update   sequential matrix multiplications per weight update
                   (PC: 2T + init chain, e.g. + L for forward; BP: 2L-1)
  total_smm        smm per batch x batches trained
  ms_per_step      mean training step time of the last epoch (ms, compile excluded)
  train_time_s     seconds spent in training epochs (compile included, evaluation excluded)
  wall_time_s      seconds for the whole command
  out_dir          run directory (metrics.jsonl, checkpoint.eqx, checkpoint.json)
  checkpoint       path of the last checkpoint
  resumed_from     epoch the run was resumed from (0 for a fresh run)
  devices, mesh, processes   with --devices/--mesh: the device count, {"data": N, "layer": M}
                   and the number of processes (printed by process 0 only)
  collapse         null, or {epoch, metric, value, best, best_epoch, message} when accuracy fell
                   far below its best (lost over half its gain over chance) or MSE doubled
"""

TRAIN_FILES = """\
Files in --out DIR (default runs/MODEL):
  metrics.jsonl    one JSON object a line: {"type": "epoch", epoch, step, energy, energy_end,
                   train_loss, train_accuracy, test_accuracy, smm_per_update, total_smm,
                   ms_per_step, epoch_time_s, wall_time_s, ...}; {"type": "step", epoch, step,
                   energy, loss} about 10 times an epoch; {"type": "inference", epoch,
                   node_energies: {node: [E at t=0..T]}} once an epoch
  checkpoint.eqx   network + optimiser state + metadata, written atomically every epoch
  checkpoint.json  a readable copy of the checkpoint metadata
--resume continues from checkpoint.eqx and ends with exactly the parameters of an
uninterrupted run (batch order depends only on seed and epoch). Options left out on resume
are taken from the checkpoint; options that change the trajectory must match it.

Exit status: 0 ok, 1 model errors or divergence, 2 usage/data/shape/checkpoint errors.
"""

# options that change the training trajectory (must match on --resume)
TRAJECTORY = ("data", "fraction", "seed", "steps", "solver", "init", "init_node", "init_option",
              "activity_lr", "weight_lr", "optimizer", "algorithm", "batch_size", "query",
              "test_query", "weight_decay", "activity_optimizer", "parameterisation", "normalize")
# resolved hyperparameters that must match the checkpoint on --resume
CONFIG_TRAJECTORY = ("steps", "activity_lr", "activity_optimizer", "weight_lr", "weight_optimizer",
                     "weight_decay", "init", "solver", "algorithm", "batch_size",
                     "parameterisation")


class CliError(Error):
    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def _err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


# ------------------------------------------------------------------------------ progress bar
class Progress:
    """A tiny progress bar on stderr: redrawn in place on a terminal, one line an epoch otherwise."""

    def __init__(self, stream=None, enabled: bool = True, width: int = 24):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width
        self.epochs = 0
        self.smm = None
        self._last = 0.0
        self._t0 = time.perf_counter()
        self._dt = []

    def start(self, epochs: int, smm) -> None:
        self.epochs, self.smm = epochs, smm

    @staticmethod
    def _fmt(v, spec=".4g"):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)

    def _line(self, epoch, done, total, energy, loss, acc=None, ms=None) -> str:
        fill = int(self.width * done / max(total, 1))
        bar = "#" * fill + "-" * (self.width - fill)
        parts = [f"epoch {epoch}/{self.epochs} [{bar}] {done}/{total}",
                 f"E {self._fmt(energy)}", f"loss {self._fmt(loss)}"]
        if acc is not None:
            parts.append(f"acc {100 * acc:.1f}%")
        if self.smm is not None:
            parts.append(f"SMM {self._fmt(self.smm, 'g')}")
        if ms is not None:
            parts.append(f"{ms:.2f} ms/step")
        return "  ".join(parts)

    def step(self, ev: dict) -> None:
        if not self.tty:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and ev["batch"] != ev["steps_per_epoch"]:
            return
        self._last = now
        line = self._line(ev["epoch"], ev["batch"], ev["steps_per_epoch"], ev["energy"],
                          ev["loss"])
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()

    def epoch(self, m: dict, steps_per_epoch: int) -> None:
        if not self.enabled:
            return
        acc = m.get("test_accuracy")
        line = self._line(m["epoch"], steps_per_epoch, steps_per_epoch, m.get("energy"),
                          m.get("train_loss"), acc, m.get("ms_per_step"))
        if acc is None and m.get("test_mse") is not None:
            line += f"  mse {m['test_mse']:.4g}"
        self.stream.write(("\r" if self.tty else "") + line + ("\x1b[K" if self.tty else "") + "\n")
        self.stream.flush()


# ------------------------------------------------------------------------------ helpers
def _load_model(path: str):
    """The validated model, or CliError(code 1) with every diagnostic rendered."""
    from ._cli import load_file

    loaded = load_file(path)
    if loaded.diagnostics:
        print("\n".join(d.render(loaded.sources) for d in loaded.diagnostics), file=sys.stderr)
    if not loaded.ok or loaded.model is None:
        n = sum(d.severity == "error" for d in loaded.diagnostics)
        raise CliError(f"{path}: {n} error(s); fix the model first (see `pcgraph check`)",
                       EXIT_MODEL)
    return loaded.model


def _load_data(name: str, data_dir, fraction: float, seed: int, download: bool = False,
               normalize: str | None = None):
    from . import data as D

    try:
        return D.load(name, data_dir=data_dir, fraction=fraction, seed=seed, download=download,
                      normalize=normalize or "standardize")
    except (D.DataError, ValueError, OSError) as e:
        raise CliError(str(e)) from None


def _append_jsonl(path: Path, records) -> None:
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r, allow_nan=True) + "\n")
        f.flush()


def _rewrite_metrics(path: Path, keep_epochs: int) -> None:
    """Keep the records of finished epochs (those a checkpoint covers); drop partial lines."""
    from ._checkpoint import atomic_write

    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(r.get("epoch", 0) or 0) <= keep_epochs and r.get("type") != "diverged":
            kept.append(line)
    atomic_write(path, lambda f: f.write("".join(s + "\n" for s in kept)), "w")


def _init_kw(cli: dict) -> dict:
    from ._run import RunError, init_kw

    try:
        return init_kw(cli)
    except RunError as e:
        raise CliError(str(e)) from None


def _jsonable_dict(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, type(None)))}


def _refuse_overwrite(out: Path, ckpt_path: Path, name: str, mhash: str, cli: dict,
                      overwrite: bool) -> None:
    """A new run in a directory that holds one: fine when it is the same run (same model and
    options) or with --overwrite; otherwise a CliError naming what differs."""
    from ._checkpoint import CheckpointError, read_meta
    from ._run import run_differences

    try:
        meta = read_meta(ckpt_path) if ckpt_path.exists() else None
    except (CheckpointError, OSError):
        meta = None
    diffs = (run_differences(meta, name, mhash, cli, TRAJECTORY) if meta is not None
             else ["an unfinished run (no checkpoint)"])
    if not diffs:
        print(f"note: {out} holds an earlier run of the same command; replacing it",
              file=sys.stderr)
    elif overwrite:
        print(f"note: --overwrite: replacing the run in {out} ({'; '.join(diffs)})",
              file=sys.stderr)
    else:
        raise CliError(f"{out} holds a different run ({'; '.join(diffs)}); pass --out DIR for a "
                       "new directory, --resume to continue that run, or --overwrite to replace it")


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


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ------------------------------------------------------------------------------ train
def configure_train(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = TRAIN_FILES + "\n" + TRAIN_JSON_FIELDS
    p.add_argument("file", metavar="FILE", help=".pcg model file")
    p.add_argument("--data", required=True, metavar="NAME",
                   help="data set: digits (embedded), fashion-mnist, mnist, kmnist, cifar10")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the data set's files")
    p.add_argument("--download", action="store_true",
                   help="fetch a missing data set (checksummed) into --data-dir, $PCGRAPH_DATA "
                        "or the cache")
    _add_setting_options(p)
    p.add_argument("--init-node", action="append", metavar="NODE=METHOD",
                   help="initialisation of one node (repeatable; wins over --init and the file)")
    p.add_argument("--init-option", action="append", metavar="KEY=VALUE",
                   help="initialiser option, e.g. mem_patterns=64, avg_m=3, random_std=0.1 "
                        "(repeatable)")
    p.add_argument("--fraction", type=float, metavar="F",
                   help="use a stratified fraction of the training set (default 1)")
    p.add_argument("--algorithm", choices=ALGORITHMS,
                   help="pc (default), incremental pc, or backprop baseline")
    p.add_argument("--out", metavar="DIR",
                   help="run directory (default runs/MODEL, runs/MODEL-ipc, runs/MODEL-bp)")
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.eqx")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a different run already in DIR (refused without it)")
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--query", help="training query (default train)")
    p.add_argument("--test-query", help="evaluation query (default test)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device_args(p)


def _add_device_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("several devices and hosts (docs/scaling.md)")
    g.add_argument("--devices", type=int, metavar="N",
                   help="data-parallel over N devices (the same as --mesh data=N)")
    g.add_argument("--mesh", metavar="SPEC",
                   help="device mesh, e.g. data=8 or data=2,layer=4: each batch split over "
                        "'data', stacked layer groups over 'layer'")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="several processes: the address of process 0 (jax.distributed)")
    g.add_argument("--num-processes", type=int, metavar="P", help="several processes: how many")
    g.add_argument("--process-id", type=int, metavar="I", help="several processes: this one's rank")
    g.add_argument("--distributed", action="store_true",
                   help="several processes, the rest from the environment JAX reads "
                        "(JAX_COORDINATOR_ADDRESS; SLURM, Open MPI, Kubernetes, Cloud TPU)")


def _devices(args: argparse.Namespace):
    """Start jax.distributed when asked and return the mesh spec for ``fit`` (None: one
    device). Before anything else touches JAX."""
    coord, nproc, pid = (getattr(args, k, None) for k in
                         ("coordinator", "num_processes", "process_id"))
    devices, mesh = getattr(args, "devices", None), getattr(args, "mesh", None)
    if devices is not None and mesh is not None:
        raise CliError("give --devices N or --mesh SPEC, not both")
    if devices is not None and devices < 1:
        raise CliError(f"--devices {devices} is out of range")
    from ._sharding import MeshError, initialize, make_mesh, parse_mesh

    if (coord is not None or nproc is not None or pid is not None
            or getattr(args, "distributed", False) or os.environ.get("JAX_COORDINATOR_ADDRESS")):
        if nproc is not None and nproc < 1:
            raise CliError(f"--num-processes {nproc} is out of range")
        if pid is not None and nproc is not None and not 0 <= pid < nproc:
            raise CliError(f"--process-id {pid} must be in 0..{nproc - 1}")
        try:
            initialize(coord, nproc, pid)
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




# Every setting a .pcg file can hold is a `train` option, generated from the registry: the flag
# is the setting's name (``weight_optimizer`` is ``--optimizer``), its type its default's type,
# its choices the registry's names. Help texts end with "(model setting, else DEFAULT)".
_FLAGS = {"weight_optimizer": ("--optimizer", "optimizer")}
_METAVARS = {"epochs": "N", "batch_size": "B", "steps": "T", "activity_lr": "LR",
             "weight_lr": "LR", "weight_decay": "WD", "seed": "S", "init": "METHOD"}
_HELP = {
    "init": "activity initialisation of every free node: " + ", ".join(INIT_METHODS)
            + " (auto: forward where Prop. 3.2 allows, else amortised/mem)",
    "weight_decay": "weight decay (decoupled, AdamW; added to the gradient for sgd)",
    "seed": "seed of parameters, batch order and data subset",
}


def _add_setting_options(p: argparse.ArgumentParser) -> None:
    for name, s in SETTINGS.items():
        flag, dest = _FLAGS.get(name, ("--" + name.replace("_", "-"), name))
        kw: dict = {"metavar": _METAVARS[name]} if name in _METAVARS else {}
        if isinstance(s.default, (int, float)) and not isinstance(s.default, bool):
            kw["type"] = type(s.default)
        if s.choices is not None and name != "init":  # --init: did-you-mean from the validator
            kw["choices"] = s.choices
        p.add_argument(flag, dest=dest, default=None,
                       help=f"{_HELP.get(name, s.help)} (model setting, else {s.default})", **kw)


def _reporting(command, args: argparse.Namespace) -> int:
    """Run a subcommand; a ``CliError`` becomes its message on stderr and its exit code."""
    try:
        return command(args)
    except CliError as e:
        _err(str(e))
        return e.code


def run_train(args: argparse.Namespace) -> int:
    return _reporting(_train, args)


def _train(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    mesh = _devices(args)
    primary = mesh is None or _process_index() == 0  # only process 0 writes the run directory
    model = _load_model(args.file)
    from ._run import default_dir

    out = Path(args.out or default_dir(model.name, args.algorithm))
    ckpt_path = out / CHECKPOINT
    metrics_path = out / METRICS

    cli = {k: getattr(args, k, None) for k in TRAJECTORY}
    cli["data_dir"] = args.data_dir
    meta = None
    if args.resume and ckpt_path.exists():
        from ._checkpoint import CheckpointError, read_meta

        try:
            meta = read_meta(ckpt_path)
        except (CheckpointError, OSError) as e:
            raise CliError(str(e)) from None
        saved = meta.get("cli", {})
        diffs = []
        for k in TRAJECTORY:
            if cli.get(k) is None:
                cli[k] = saved.get(k)
            elif saved.get(k) is not None and cli[k] != saved.get(k):
                diffs.append(f"--{k.replace('_', '-')} {cli[k]} (checkpoint: {saved.get(k)})")
        if diffs:
            raise CliError(f"cannot resume {ckpt_path}: options differ from the checkpoint: "
                           + "; ".join(diffs))
        if cli.get("data_dir") is None:
            cli["data_dir"] = saved.get("data_dir")
    elif args.resume:
        raise CliError(f"--resume: no checkpoint {ckpt_path}; leave out --resume to start a new "
                       "run there")

    epochs = args.epochs if args.epochs is not None else (meta or {}).get("cli", {}).get("epochs")
    for name, v, ok in (("--epochs", epochs, lambda v: v >= 1),
                        ("--batch-size", cli["batch_size"], lambda v: v >= 1),
                        ("--steps", cli["steps"], lambda v: v >= 0),
                        ("--fraction", cli["fraction"], lambda v: 0 < v <= 1),
                        ("--activity-lr", cli["activity_lr"], lambda v: v > 0),
                        ("--weight-lr", cli["weight_lr"], lambda v: v >= 0),
                        ("--weight-decay", cli["weight_decay"], lambda v: v >= 0)):
        if v is not None and not ok(v):
            raise CliError(f"{name} {v} is out of range")
    q = cli["query"] or "train"
    tq = cli["test_query"] or "test"
    if q not in {x.name for x in model.queries}:
        raise CliError(f"model {model.name} has no query {q!r}; it has: "
                       + ", ".join(x.name for x in model.queries))
    seed = int(cli["seed"] if cli["seed"] is not None else model.settings.get("seed"))
    cli["seed"] = seed
    fraction = float(cli["fraction"] or 1.0)
    from ._config import resolve_config

    try:  # the one resolution of settings and flags into the run's configuration
        config = resolve_config(
            model.settings, algorithm=cli["algorithm"], **_init_kw(cli), steps=cli["steps"],
            activity_lr=cli["activity_lr"], weight_lr=cli["weight_lr"],
            weight_optimizer=cli["optimizer"], init=cli["init"], solver=cli["solver"],
            epochs=epochs, batch_size=cli["batch_size"], weight_decay=cli["weight_decay"],
            activity_optimizer=cli["activity_optimizer"],
            parameterisation=cli["parameterisation"], normalize=cli["normalize"])
    except ValueError as e:
        raise CliError(str(e)) from None
    cfg = config.record
    ds = _load_data(cli["data"], cli["data_dir"], fraction, seed, bool(args.download),
                    cfg["normalize"])

    import equinox as eqx

    from . import data as D
    from ._binding import BindingError, bind, prepare_dataset
    from ._checkpoint import CheckpointError, load as ckpt_load, save as ckpt_save
    from ._divergence import TrainingDiverged
    from ._fit import TrainState, fit, fresh_carry, model_hash
    from ._network import build

    _preflight(model, cli, epochs, seed)  # limits and memory, before anything is allocated
    try:
        net = build(model, seed=seed, parameterisation=cfg["parameterisation"])
    except (ValueError, KeyError) as e:
        raise CliError(f"cannot build {model.name}: {e}", EXIT_MODEL) from None
    try:  # shapes before anything is compiled
        binding = bind(net, q, tq)
        prepare_dataset(net, ds, binding)
    except (BindingError, D.DataShapeError, KeyError) as e:
        raise CliError(str(e).strip('"')) from None

    from ._diagnostics import PcgError

    try:  # the init plan and its options, before anything is compiled
        like_carry = fresh_carry(net, query=q, init=config.init, batch_size=config.batch_size,
                                 seed=seed, algorithm=config.algorithm)
    except PcgError as e:
        from ._diagnostics import relabel
        from ._limits import CLI_LABELS

        print(relabel(e, CLI_LABELS).render(), file=sys.stderr)
        options = all(d.span.line <= 0 for d in e.diagnostics)  # a bad flag, not the file
        raise CliError(f"cannot initialise {model.name}: see above",
                       EXIT_USAGE if options else EXIT_MODEL) from None
    except (ValueError, KeyError) as e:
        raise CliError(str(e).strip('"')) from None
    cli["epochs"] = cfg["epochs"]
    mhash = model_hash(model)
    if primary and meta is None and (ckpt_path.exists() or metrics_path.exists()):
        _refuse_overwrite(out, ckpt_path, model.name, mhash, cli, bool(args.overwrite))

    state = None
    resumed_from = 0
    if meta is not None:
        saved_cfg = meta.get("config") or {}
        diffs = [f"{k} {cfg[k]!r} (checkpoint: {saved_cfg[k]!r})" for k in CONFIG_TRAJECTORY
                 if k in saved_cfg and k in cfg and saved_cfg[k] != cfg[k]]
        if diffs:
            raise CliError(f"cannot resume {ckpt_path}: options differ from the checkpoint: "
                           + "; ".join(diffs))
        if meta.get("model_hash") and meta["model_hash"] != mhash:
            raise CliError(f"cannot resume {ckpt_path}: it was written for a different model "
                           f"(model hash {meta['model_hash'][:12]}, this file {mhash[:12]})")
        like_opt = config.weight_optimizer.init(eqx.filter(net, eqx.is_inexact_array))
        try:
            net, opt_state, carry, meta = ckpt_load(ckpt_path, net, like_opt, like_carry)
        except CheckpointError as e:
            raise CliError(str(e)) from None
        state = TrainState.from_meta(opt_state, carry, meta)
        resumed_from = state.epoch
        if primary:
            _rewrite_metrics(metrics_path, state.epoch)
    elif primary:
        out.mkdir(parents=True, exist_ok=True)
        for stale in (ckpt_path, ckpt_path.with_suffix(".json")):
            stale.unlink(missing_ok=True)
        metrics_path.write_text("")

    progress = Progress(enabled=not args.quiet and primary)
    log_every = 1
    written = {"ckpt": str(ckpt_path) if meta is not None else None}

    def callback(ev: dict):
        nonlocal log_every
        kind = ev["kind"]
        if kind == "start":
            progress.start(ev["epochs"], ev["smm_per_update"])
            run_cfg[0] = ev["config"]
            if ev["start_epoch"] == 0 and primary:
                _append_jsonl(metrics_path, [{"type": "run", "model": model.name,
                                              "model_file": args.file, "data": cli["data"],
                                              "seed": seed, "cli": cli,
                                              "config": _jsonable_dict(ev["config"])}])
            cfg_steps_per_epoch[0] = ev["steps_per_epoch"]
            log_every = max(1, ev["steps_per_epoch"] // 10)
        elif kind == "step":
            progress.step(ev)
            if primary and (ev["batch"] % log_every == 0 or ev["batch"] == 1):
                _append_jsonl(metrics_path, [{"type": "step", "epoch": ev["epoch"],
                                              "step": ev["step"], "energy": ev["energy"],
                                              "energy_end": ev["energy_end"],
                                              "loss": ev["loss"]}])
        elif kind == "epoch":
            m = ev["metrics"]
            progress.epoch(m, cfg_steps_per_epoch[0])
            if m.get("collapse") and not collapsed:
                collapsed.append(m["collapse"])
                if primary:
                    if progress.tty:
                        sys.stderr.write("\n")
                    print(f"warning: {m['collapse']['message']}", file=sys.stderr)
            recs = [m]
            if ev.get("inference"):
                recs.append({"type": "inference", "epoch": ev["epoch"], "step": m["step"],
                             "node_energies": ev["inference"]})
            if not primary:
                return
            _append_jsonl(metrics_path, recs)
            st = ev["state"]
            cmeta = {**st.meta(), "seed": seed, "model": model.name, "model_file": args.file,
                     "model_hash": mhash, "model_text": model_text, "settings": dict(model.settings.as_dict()),
                     "config": {k: v for k, v in run_cfg[0].items()},
                     "cli": cli, "rng": {"batch_order": "numpy default_rng([seed, epoch])",
                                         "step_key": "fold_in(fold_in(PRNGKey(seed), epoch), batch)"}}
            ckpt_save(ckpt_path, ev["net"], st.opt_state, st.carry, cmeta)
            written["ckpt"] = str(ckpt_path)

    cfg_steps_per_epoch = [len(ds.x_train) // cfg["batch_size"]]
    run_cfg = [cfg]
    collapsed: list = [m["collapse"] for m in (state.history if state else ()) if m.get("collapse")]
    from ._collapse import CollapseWarning
    from ._format import format_model

    model_text = format_model(model)

    try:
        with warnings.catch_warnings():  # printed by the callback instead
            warnings.simplefilter("ignore", CollapseWarning)
            result = fit(net, ds, config, query=q, test_query=tq, seed=seed, callback=callback,
                         state=state, mesh=mesh)
    except TrainingDiverged as e:
        if progress.tty:
            sys.stderr.write("\n")
        _append_jsonl(metrics_path if primary else Path(os.devnull), [{"type": "diverged", "epoch": e.epoch, "step": e.step,
                                      "nodes": list(e.nodes), "message": str(e)}])
        _err(str(e))
        return EXIT_MODEL
    except (D.DataError, ValueError, KeyError) as e:
        raise CliError(f"{type(e).__name__}: {e}") from None
    except Exception as e:  # out of memory that slipped past the estimate
        if not _out_of_memory(e):
            raise
        raise CliError(f"out of memory while training {model.name} (the last checkpoint, if "
                       f"any, is in {out}): {str(e).splitlines()[0][:300]}; use a smaller "
                       "--batch-size") from None

    final = result.final
    summary = {
        "model": model.name, "data": cli["data"], "algorithm": cfg["algorithm"], "seed": seed,
        "epochs": result.state.epoch, "steps": result.state.step,
        "steps_per_epoch": result.steps_per_epoch, "batch_size": cfg["batch_size"],
        "test_accuracy": final.get("test_accuracy"), "train_accuracy": final.get("train_accuracy"),
        "test_mse": final.get("test_mse"),
        "final_energy": _jsonable(final.get("energy")), "final_loss": _jsonable(final.get("train_loss")),
        "smm_per_update": result.smm_per_update,
        "total_smm": result.smm_per_batch * result.state.step,
        "ms_per_step": final.get("ms_per_step"),
        "train_time_s": result.state.wall_time_s,
        "wall_time_s": time.perf_counter() - t_start,
        "out_dir": str(out), "checkpoint": written["ckpt"], "resumed_from": resumed_from,
        "collapse": collapsed[0] if collapsed else None,
    }
    if mesh is not None:
        summary["devices"] = int(mesh.devices.size)
        summary["mesh"] = dict(mesh.shape)
        summary["processes"] = _process_count()
    if not primary:
        return EXIT_OK
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        acc = summary["test_accuracy"]
        res = (f"test accuracy {100 * acc:.2f}%" if acc is not None else
               f"test mse {summary['test_mse']:.4g}" if summary["test_mse"] is not None else "done")
        print(f"{model.name} on {cli['data']}: {res} after {summary['epochs']} epoch(s) "
              f"({summary['train_time_s']:.1f} s training, {summary['smm_per_update']:g} SMM per "
              f"update); run in {out}")
        if collapsed:
            print(f"warning: {collapsed[0]['message']}")
    return EXIT_OK


def _process_index() -> int:
    import jax

    return jax.process_index()


def _process_count() -> int:
    import jax

    return jax.process_count()


# ------------------------------------------------------------------------------ eval
def configure_eval(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = ("--json prints {model, algorithm, data, checkpoint, epoch, query, split, n, "
                "SPLIT_accuracy, SPLIT_mse, settings}\n(SPLIT is test or train; the text output "
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
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--json", action="store_true", help="print a JSON result on stdout")


def run_eval(args: argparse.Namespace) -> int:
    return _reporting(_eval, args)


def _eval(args: argparse.Namespace) -> int:
    model = _load_model(args.file)
    from ._run import RunError, checkpoint_path, describe, load_run

    ckpt = checkpoint_path(args.checkpoint)
    if not ckpt.exists():
        raise CliError(f"{ckpt}: no such checkpoint")
    try:
        run = load_run(ckpt, model=model)
    except RunError as e:
        raise CliError(str(e)) from None
    if run.meta.get("model_hash") and run.meta["model_hash"] != _model_hash(model):
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
    try:
        res = run.evaluate(ds, query=query, batch_size=args.batch_size, split=args.split)
    except (BindingError, D.DataError, ValueError, KeyError) as e:
        raise CliError(str(e).strip('"')) from None
    split = args.split
    out = {"model": model.name, "algorithm": run.algorithm, "data": name, "checkpoint": str(ckpt),
           "epoch": run.epoch, "query": res.get("query", query), "split": split, "n": res.get("n"),
           f"{split}_accuracy": res.get("accuracy"), f"{split}_mse": res.get("mse"),
           "settings": {k: v for k, v in run.settings.items()
                        if isinstance(v, (str, int, float, bool, type(None)))}}
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


def _model_hash(model) -> str:
    from ._fit import model_hash

    return model_hash(model)


# ------------------------------------------------------------------------------ draw
def configure_draw(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help=".pcg model file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output picture (.png, .svg or .pdf)")
    p.add_argument("--query", metavar="NAME",
                   help="colour node roles of this query (default: train, else the first)")


def run_draw(args: argparse.Namespace) -> int:
    try:
        model = _load_model(args.file)
        suffix = Path(args.output).suffix.lower()
        if suffix not in (".png", ".svg", ".pdf"):
            raise CliError(f"-o {args.output}: use a .png, .svg or .pdf file name")
        if args.query and args.query not in {q.name for q in model.queries}:
            raise CliError(f"model {model.name} has no query {args.query!r}; it has: "
                           + (", ".join(q.name for q in model.queries) or "none"))
        from ._draw import draw

        try:
            path = draw(model, args.output, query=args.query)
        except OSError as e:
            raise CliError(f"cannot write {args.output}: {e}") from None
        print(f"wrote {path}", file=sys.stderr)
        return EXIT_OK
    except CliError as e:
        _err(str(e))
        return e.code


# ------------------------------------------------------------------------------ plot
def configure_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="DIR", help="run directory holding metrics.jsonl (or the file)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output picture (.png)")


def run_plot(args: argparse.Namespace) -> int:
    from ._plot import plot_run, read_metrics, run_record

    try:
        path = plot_run(args.run, args.output)
        print(_plot_header(args.run, run_record(read_metrics(args.run))))
    except (FileNotFoundError, ValueError) as e:
        _err(str(e))
        return EXIT_USAGE
    except OSError as e:
        _err(f"cannot write {args.output}: {e}")
        return EXIT_USAGE
    print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def _plot_header(run: str, info: dict | None) -> str:
    """``run DIR: model ..., algorithm ..., ...`` from the checkpoint next to the metrics (the run
    record of metrics.jsonl when there is none)."""
    from ._checkpoint import CheckpointError, read_meta
    from ._run import checkpoint_path, describe

    d = Path(run) if Path(run).is_dir() else Path(run).parent
    try:
        return f"run {d}: {describe(read_meta(checkpoint_path(d)))}"
    except (CheckpointError, OSError):
        pass
    if info is None:
        return f"run {d}: (no checkpoint or run record: model, algorithm and settings unknown)"
    return f"run {d}: " + describe({"model": info["model"], "seed": info["seed"], "epoch": "-",
                                    "config": info["config"], "cli": info["cli"]})


# ------------------------------------------------------------------------------ registration
SUBCOMMANDS = {
    "train": ("train a model on a data set (progress, metrics.jsonl, checkpoints, --resume)",
              "pcgraph._cli_train:configure_train", "pcgraph._cli_train:run_train"),
    "eval": ("evaluate a checkpoint on a data set's test split",
             "pcgraph._cli_train:configure_eval", "pcgraph._cli_train:run_eval"),
    "draw": ("draw a model's topology (PNG/SVG)",
             "pcgraph._cli_train:configure_draw", "pcgraph._cli_train:run_draw"),
    "plot": ("plot training curves of a run directory",
             "pcgraph._cli_train:configure_plot", "pcgraph._cli_train:run_plot"),
}

_HANDLERS = {
    "train": (configure_train, run_train),
    "eval": (configure_eval, run_eval),
    "draw": (configure_draw, run_draw),
    "plot": (configure_plot, run_plot),
}


def register(subparsers) -> None:
    """Add ``train``, ``eval``, ``draw`` and ``plot`` to an argparse subparsers object; each parser
    gets ``_run`` (its handler ``args -> exit status``) as a default."""
    for name, (help_, _, _) in SUBCOMMANDS.items():
        configure, run = _HANDLERS[name]
        p = subparsers.add_parser(name, help=help_, description=help_)
        configure(p)
        p.set_defaults(_run=run)


def main(argv=None) -> int:
    """A stand-alone entry point with just these four subcommands (for tests)."""
    parser = argparse.ArgumentParser(prog="pcgraph")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        return 130
