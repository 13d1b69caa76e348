"""The options of ``pcgraph train``: one flag per setting of ``_registry.SETTINGS`` (its type,
default and choices come from the registry), the data, run-directory and device flags, and the
help epilogs (the ``--json`` fields, the files of a run directory).

Imports nothing heavy: ``pcgraph --help`` builds this parser.
"""

from __future__ import annotations

import argparse

from ._masks import MASK_HELP
from ._registry import ALGORITHMS, INIT_METHODS, SETTINGS

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
  val_accuracy     with --val-fraction: validation accuracy of the last epoch (val_mse:
                   generative); best_epoch, best_val, best_checkpoint: the epoch chosen by
                   validation, its metric and best.eqx
  resumed_from     epoch the run was resumed from (0 for a fresh run)
  devices, mesh, processes   with --devices/--mesh: the device count, {"data": N, "layer": M}
                   and the number of processes (printed by process 0 only)
  rows_on_demand   with --devices/--mesh: true when the images stay on disk and each process
                   reads only its rows (several processes, raw IDX files; docs/scaling.md)
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
  best.eqx         with --val-fraction: the checkpoint of the epoch with the best validation
                   metric (val_accuracy, or val_mse for generative models; first on ties),
                   written atomically when an epoch improves it (best.json: its metadata)
--resume continues from checkpoint.eqx and ends with exactly the parameters of an
uninterrupted run (batch order depends only on seed and epoch). Options left out on resume
are taken from the checkpoint; options that change the trajectory must match it.

Exit status: 0 ok, 1 model errors or divergence, 2 usage/data/shape/checkpoint errors.
"""


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
    add_setting_options(p)
    p.add_argument("--init-node", action="append", metavar="NODE=METHOD",
                   help="initialisation of one node (repeatable; wins over --init and the file)")
    p.add_argument("--init-option", action="append", metavar="KEY=VALUE",
                   help="initialiser option, e.g. mem_patterns=64, avg_m=3, random_std=0.1 "
                        "(repeatable)")
    p.add_argument("--fraction", type=float, metavar="F",
                   help="use a stratified fraction of the training set (default 1)")
    p.add_argument("--mask", metavar="SPEC", help=MASK_HELP + "; the training and test data then "
                   "carry it for the query that clamps a node where a mask (e.g. --test-query "
                   "inpaint: test_mse is the MSE on the missing elements)")
    p.add_argument("--val-fraction", type=float, metavar="F",
                   help="hold out this class-stratified share of the training set for validation "
                        "(drawn from --seed; default 0): val_accuracy every epoch, best.eqx")
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
    add_device_options(p)


def add_device_options(p: argparse.ArgumentParser) -> None:
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


def add_setting_options(p: argparse.ArgumentParser) -> None:
    for name, s in SETTINGS.items():
        flag, dest = _FLAGS.get(name, ("--" + name.replace("_", "-"), name))
        kw: dict = {"metavar": _METAVARS[name]} if name in _METAVARS else {}
        if isinstance(s.default, (int, float)) and not isinstance(s.default, bool):
            kw["type"] = type(s.default)
        if s.choices is not None and name != "init":  # --init: did-you-mean from the validator
            kw["choices"] = s.choices
        p.add_argument(flag, dest=dest, default=None,
                       help=f"{_HELP.get(name, s.help)} (model setting, else {s.default})", **kw)
