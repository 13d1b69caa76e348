"""Run directories of ``pcgraph train``, opened from Python: :func:`load_run`.

A run directory holds ``checkpoint.eqx`` (network, optimiser state, initialiser state, metadata:
see ``_checkpoint``) and ``metrics.jsonl``. ``load_run(DIR)`` rebuilds the model the run trained
(from the model text stored in the checkpoint, else the file it names, else ``model=``), applies
the settings the command line gave, and reads the arrays back::

    run = pcgraph.load_run("runs/decoder")
    ds = run.load_data()                       # the data set, scaled as in training
    print(run.evaluate(ds))                    # = `pcgraph eval ... --checkpoint runs/decoder`
    step = pcgraph.make_eval_step(run.net, "infer", **run.inference)
    z = step(run.net, {"img": ds.x_test[:8]}, carry=run.carry)["z"]

``run.carry`` is the initialiser state learned in training (memories, amortiser, class means);
queries that initialise with ``mem``, ``amortised`` or ``null`` need it. ``run.opt_state`` is
the weight optimiser's state, ``run.settings`` the resolved hyperparameters. Problems raise
:class:`RunError` naming what to pass.

Also here: the facts ``pcgraph train``/``eval``/``plot`` share about a run: where it goes by
default (:func:`default_dir`), whether a directory holds a different run (:func:`run_differences`),
and a one-line description (:func:`describe`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._errors import Error

CHECKPOINT = "checkpoint.eqx"

# the command-line options a checkpoint without a resolved ``config`` record still carries in its
# ``cli`` record: option dest -> setting name
SETTING_OPTIONS = {"steps": "steps", "activity_lr": "activity_lr", "weight_lr": "weight_lr",
                   "optimizer": "weight_optimizer", "solver": "solver",
                   "batch_size": "batch_size", "weight_decay": "weight_decay",
                   "activity_optimizer": "activity_optimizer",
                   "parameterisation": "parameterisation", "normalize": "normalize"}

# the settings a description of a run shows, in order
_SHOWN = ("steps", "activity_lr", "activity_optimizer", "weight_lr", "weight_optimizer",
          "weight_decay", "init", "solver", "batch_size", "epochs", "parameterisation")


class RunError(Error, ValueError):
    """A run directory could not be opened: no checkpoint, another model, stale arrays."""


def cli_settings(cli: Mapping[str, Any]) -> dict:
    """The settings the command line ``cli`` (a checkpoint's ``cli`` record) put on the model."""
    return {s: cli.get(k) for k, s in SETTING_OPTIONS.items() if cli.get(k) is not None}


def default_dir(model_name: str, algorithm: str | None) -> Path:
    """``runs/MODEL`` for predictive coding, ``runs/MODEL-ipc`` / ``runs/MODEL-bp`` otherwise, so
    the three algorithms of one model never share a directory."""
    algo = algorithm or "pc"
    return Path("runs") / (model_name if algo == "pc" else f"{model_name}-{algo}")


def run_differences(meta: Mapping, model_name: str, model_hash: str, cli: Mapping,
                    keys) -> list[str]:
    """How the run in a checkpoint (``meta``) differs from the one about to start: model, model
    text, or any option among ``keys`` (an empty list: the same run)."""
    out = []
    if meta.get("model") and meta["model"] != model_name:
        out.append(f"model {meta['model']} (this one: {model_name})")
    elif meta.get("model_hash") and meta["model_hash"] != model_hash:
        out.append("another version of the model file")
    saved = meta.get("cli") or {}
    for k in keys:
        a, b = saved.get(k), cli.get(k)
        if k == "algorithm":
            a, b = a or "pc", b or "pc"
        if a != b:
            out.append(f"--{k.replace('_', '-')} {_shown(a)} (this one: {_shown(b)})")
    return out


def _shown(v) -> str:
    return "unset" if v is None else str(v)


def describe(meta: Mapping) -> str:
    """``model digits_mlp, algorithm pc, data digits, epoch 10; steps 10, activity_lr 0.1, ...``"""
    cfg = meta.get("config") or {}
    cli = meta.get("cli") or {}
    head = (f"model {meta.get('model', '?')}, algorithm {cfg.get('algorithm') or cli.get('algorithm') or 'pc'}, "
            f"data {cli.get('data', '?')}")
    if cli.get("fraction") not in (None, 1, 1.0):
        head += f" (fraction {cli['fraction']})"
    head += f", seed {meta.get('seed', '?')}, epoch {meta.get('epoch', '?')}"
    shown = ", ".join(f"{k} {cfg[k]}" for k in _SHOWN if cfg.get(k) is not None)
    extra = [f"{k} {v}" for k, v in (("init_node", cli.get("init_node")),
                                     ("init_option", cli.get("init_option"))) if v]
    if cfg.get("normalize") or cli.get("normalize"):
        extra.append(f"normalize {cli.get('normalize') or cfg.get('normalize')}")
    return head + ("; " + ", ".join([shown, *extra]) if shown or extra else "")


def parse_value(v: str):
    """A command-line value as bool, int or float when it looks like one, else the string."""
    if v.lower() in ("true", "false"):
        return v.lower() == "true"
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def parse_pairs(items, what: str) -> dict:
    """``["a=b", ...]`` (the values of option ``--what``) to a dict of parsed values."""
    out = {}
    for it in items or ():
        k, sep, v = it.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise RunError(f"--{what} {it!r}: expected NAME=VALUE")
        out[k.strip()] = parse_value(v.strip())
    return out


def init_kw(cli: Mapping[str, Any]) -> dict:
    """``init_nodes`` and ``init_options`` (of ``resolve_config``) from a command line's
    ``init_node``/``init_option``."""
    return {"init_nodes": {k: str(v) for k, v in
                               parse_pairs(cli.get("init_node"), "init-node").items()},
            "init_options": parse_pairs(cli.get("init_option"), "init-option")}


def checkpoint_path(path: str | Path) -> Path:
    p = Path(path)
    return p / CHECKPOINT if p.is_dir() else p


@dataclass(frozen=True)
class Run:
    """A trained run: ``net``, ``opt_state``, ``carry`` (initialiser state), ``config`` (the
    run's :class:`~pcgraph.Config`), ``settings`` (the resolved hyperparameters, by name),
    ``model`` (its ``ModelIR``), ``meta`` (the checkpoint's metadata) and ``path`` (the
    checkpoint file)."""

    path: Path
    model: Any
    net: Any
    opt_state: Any
    carry: Any
    settings: dict
    meta: dict
    config: Any = None

    @property
    def cli(self) -> dict:
        return dict(self.meta.get("cli") or {})

    @property
    def epoch(self) -> int:
        return int(self.meta.get("epoch", 0))

    @property
    def algorithm(self) -> str:
        return self.settings.get("algorithm") or "pc"

    @property
    def query(self) -> str:
        """The training query."""
        return self.cli.get("query") or "train"

    @property
    def test_query(self) -> str:
        return self.cli.get("test_query") or "test"

    @property
    def inference(self) -> dict:
        """``{"inference": ..., "init": ...}``: the training run's inference (solver, steps, step
        size) and initialisation (method, per-node methods, options), the keyword arguments of
        ``make_eval_step`` for this run (pass ``carry=run.carry`` to the step)."""
        return {"inference": self.config.inference, "init": self.config.init}

    def describe(self) -> str:
        return describe(self.meta)

    def evaluate(self, data, *, query: str | None = None, split: str = "test", **kw) -> dict:
        """``pcgraph.evaluate`` with this run's inference settings, initialisation and state."""
        from ._evaluate import eval_init, evaluate

        q = query or self.test_query
        opts = dict(query=q, split=split, train_query=self.query, carry=self.carry,
                    inference=self.config.inference,
                    init=eval_init(self.net, q, self.config.init))
        opts.update(kw)
        return evaluate(self.net, data, **opts)

    def load_data(self, name: str | None = None, *, data_dir=None, download: bool = False):
        """The data set the run trained on (same fraction, validation split, seed and pixel
        scaling), or ``name``
        (whole, scaled the same way)."""
        from . import data as D

        cli = self.cli
        same = name is None or name == cli.get("data")
        name = name or cli.get("data")
        if not name:
            raise RunError(f"{self.path}: the checkpoint does not say which data set it used; "
                           "pass load_data(NAME)")
        return D.load(name, data_dir=data_dir or cli.get("data_dir"),
                      fraction=float(cli.get("fraction") or 1.0) if same else 1.0,
                      seed=int(cli.get("seed") if cli.get("seed") is not None
                               else self.meta.get("seed", 0)),
                      normalize=self.settings.get("normalize") or "standardize",
                      val_fraction=float(cli.get("val_fraction") or 0.0) if same else 0.0,
                      download=download)


def _model_of(ckpt: Path, meta: Mapping, model):
    """The ModelIR to rebuild: ``model`` (a path, text or ModelIR), else the checkpoint's stored
    text, else the file it names."""
    from ._load import load

    name = meta.get("model")
    if model is None:
        if meta.get("model_text"):
            return load(meta["model_text"])
        f = meta.get("model_file")
        if f and Path(f).exists():
            return load(Path(f))
        raise RunError(f"{ckpt}: the checkpoint does not hold its model's text and its file "
                       f"{f!r} is not here; pass load_run(DIR, model=PATH) with the .pcg file of "
                       f"model {name}")
    m = model if hasattr(model, "nodes") else load(model)
    if name and m.name != name:
        raise RunError(f"{ckpt} belongs to model {name}, not {m.name}; use it with {name}'s "
                       ".pcg file")
    return m


def load_run(path: str | Path, model=None) -> Run:
    """Open a run directory (or checkpoint file) written by ``pcgraph train``.

    ``model``: the model's ``.pcg`` path, text or ``ModelIR`` (default: the model the checkpoint
    stores). Returns a :class:`Run`; raises :class:`RunError` with what to pass instead."""
    import equinox as eqx

    from ._checkpoint import CheckpointError, read_meta
    from ._checkpoint import load as ckpt_load
    from ._config import resolve_config
    from ._fit import fresh_carry, model_hash
    from ._network import build
    from ._registry import SETTINGS

    ckpt = checkpoint_path(path)
    if not ckpt.exists():
        raise RunError(f"{path}: no {CHECKPOINT} here; train first (pcgraph train MODEL --data "
                       f"NAME --out {path}) or pass the run directory `pcgraph train` printed")
    try:
        meta = read_meta(ckpt)
    except (CheckpointError, OSError) as e:
        raise RunError(str(e)) from None
    m = _model_of(ckpt, meta, model)
    stale = bool(meta.get("model_hash")) and meta["model_hash"] != model_hash(m)
    cli = dict(meta.get("cli") or {})
    saved = {**cli_settings(cli), **(meta.get("config") or {})}
    try:  # the training run's settings (its record), its --init and init options
        config = resolve_config(
            m.settings, algorithm=saved.get("algorithm") or cli.get("algorithm"), **init_kw(cli),
            init=cli.get("init"),
            **{k: v for k, v in saved.items() if k in SETTINGS and k != "init"})
    except ValueError as e:
        raise RunError(f"{ckpt}: cannot rebuild the training configuration: {e}") from None
    seed = int(meta.get("seed", 0))
    net = build(m, seed=seed, parameterisation=config.record["parameterisation"])
    like_opt = config.weight_optimizer.init(eqx.filter(net, eqx.is_inexact_array))
    try:
        like_carry = fresh_carry(net, query=cli.get("query") or "train", init=config.init,
                                 seed=seed, batch_size=config.batch_size,
                                 algorithm=config.algorithm)
        net, opt_state, carry, meta = ckpt_load(ckpt, net, like_opt, like_carry)
    except CheckpointError as e:
        if stale:
            raise RunError(f"{ckpt} was written for another version of model {m.name}: its arrays "
                           "do not fit this file's (a node's shape or an edge changed); retrain, "
                           "or pass model= the file as it was") from None
        raise RunError(str(e)) from None
    except (ValueError, KeyError) as e:
        raise RunError(f"{ckpt}: cannot rebuild the initialiser state: {e}") from None
    settings = {**config.record, **(meta.get("config") or {})}
    return Run(path=ckpt, model=m, net=net, opt_state=opt_state, carry=carry, settings=settings,
               meta=dict(meta), config=config)
