"""``pcgraph analyse FILE``: :func:`pcgraph.analyse` on a batch, per query.

For each query (all of the model's, or ``--query``) on one batch (the first ``--batch-size``
training examples of ``--data``, else a seeded standard-normal batch with random one-hot labels
for categorical nodes): energy per node at initialisation and after T inference steps, the
activity Hessian's extreme eigenvalues and condition number (matrix-free Lanczos on large
networks), the cosine between the PC weight gradient and the BP gradient, and for linear graphs
the equilibrated energy F* (or a warning when the system is singular). ``--checkpoint`` analyses
trained weights; ``-o PNG`` draws the per-node energies; ``--json`` prints a JSON document.

Exit status: 0 ok (warnings on stderr); 1 the model file has errors; 2 a usage, data or checkpoint
problem. Nothing here imports JAX at module level.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from ._cli_common import EXIT_MODEL, EXIT_OK, EXIT_USAGE, CliError

JSON_FIELDS = """\
--json prints {model, file, data, checkpoint, batch_size, seed, queries: [...]}; each query:
  query, batch_size, init, inference (gd, or the ODE solver), steps
  energy_init / energy_end   {node: E_v} (batch mean) at t = 0 and after T steps
  total_init / total_end     F at t = 0 and after T steps
  hessian_at                 init | end: where the activity Hessian is taken
  hessian                    {lambda_min, lambda_max, cond, n, method, scale, converged, matvecs,
                             residual} (per-sample eigenvalues; cond null when lambda_min <= 0;
                             residual ||Hv - lambda_min v|| for lanczos, else null)
  alignment                  {cosine, per_term: {term: cosine}, pc_norm, bp_norm} or null
  linear                     whether every transform is linear-gaussian
  equilibrium                linear graphs: {equilibrated_energy (null when singular), singular,
                             free_roots_without_prior, warning, method, hessian}; else null
  notes, warnings            lists of strings
Exit status: 0 ok, 1 model errors, 2 usage/data/checkpoint errors.
"""


def configure_analyse(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = JSON_FIELDS
    p.add_argument("file", metavar="FILE", help=".pcg model file")
    p.add_argument("--checkpoint", metavar="CKPT",
                   help="trained weights (a checkpoint file or a run directory)")
    p.add_argument("--data", metavar="NAME",
                   help="take the batch from this data set's training split (default: random)")
    p.add_argument("--data-dir", metavar="DIR", help="folder with the data set's files")
    p.add_argument("--query", action="append", metavar="Q",
                   help="query to analyse (repeatable; default: every query of the model)")
    p.add_argument("--batch-size", type=int, default=16, metavar="B", help="batch size (16)")
    p.add_argument("--steps", type=int, metavar="T", help="inference steps (default: settings)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of the weights (without --checkpoint) and the random batch")
    p.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="override a `param` of the file, e.g. depth=128 (repeatable)")
    p.add_argument("--hessian-at", choices=("init", "end"), default="end",
                   help="activities at which the Hessian is taken (default end: after T steps)")
    p.add_argument("--method", choices=("auto", "dense", "lanczos"), default="auto",
                   help="eigenvalues: dense up to 1024 inference variables (auto), or Lanczos")
    p.add_argument("--tol", type=float, default=1e-6, help="Lanczos relative tolerance (1e-6)")
    p.add_argument("--maxiter", type=int, metavar="N", help="Lanczos restart cap (300)")
    p.add_argument("--ncv", type=int, metavar="N", help="Lanczos basis size (128)")
    p.add_argument("--no-spectrum", action="store_true", help="skip the Hessian spectrum")
    p.add_argument("--json", action="store_true", help="print a JSON document on stdout")
    p.add_argument("-o", "--output", metavar="PNG", help="draw the per-node energies")


def run_analyse(args: argparse.Namespace) -> int:
    try:
        return _analyse(args)
    except CliError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code


def _params(items) -> dict:
    """``--param NAME=VALUE`` pairs (numbers as numbers)."""
    out = {}
    for it in items or ():
        k, sep, v = it.partition("=")
        if not sep or not k.strip() or not v.strip():
            raise CliError(f"--param {it!r}: expected NAME=VALUE")
        try:
            out[k.strip()] = float(v) if any(c in v for c in ".eE") else int(v)
        except ValueError:
            raise CliError(f"--param {it!r}: the value must be a number") from None
    return out


def _load(path: str, params: dict):
    from ._load import check

    if not Path(path).exists():
        raise CliError(f"{path}: no such file")
    try:
        c = check(Path(path), params=params or None)
    except (KeyError, ValueError) as e:
        raise CliError(f"--param: {str(e).strip(chr(34))}") from None
    if c.diagnostics:
        print("\n".join(d.render(c.sources) for d in c.diagnostics), file=sys.stderr)
    if c.model is None or any(d.severity == "error" for d in c.diagnostics):
        n = sum(d.severity == "error" for d in c.diagnostics)
        raise CliError(f"{path}: {n} error(s); fix the model first (see `pcgraph check`)",
                       EXIT_MODEL)
    return c.model


def _checkpointed(net, path: str):
    from ._checkpoint import CheckpointError, load

    ckpt = Path(path)
    if ckpt.is_dir():
        ckpt = ckpt / "checkpoint.eqx"
    try:
        net, _, _, meta = load(ckpt, net)  # the network is the first tree: read it alone
    except (CheckpointError, OSError) as e:
        raise CliError(str(e)) from None
    return net, str(ckpt)


def _random_batch(net, nodes, B: int, seed: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {}
    plan = net.plan
    for n in nodes:
        grp = plan.groups[plan.loc[n][0]]
        shape = tuple(net.node_shape(n))
        if grp.energy == "categorical" and len(shape) == 1:
            out[n] = rng.integers(0, shape[0], size=B).astype(np.int32)
        else:
            out[n] = rng.standard_normal((B,) + shape).astype(np.float32)
    return out


def _data_batch(net, args) -> tuple[dict, str]:
    from . import data as D
    from ._binding import BindingError, bind

    names = {q.name for q in net.model.queries}
    train = "train" if "train" in names else net.model.queries[0].name
    try:
        b = bind(net, train, "test" if "test" in names else None)
    except BindingError as e:
        raise CliError(str(e)) from None
    try:
        ds = D.load(args.data, data_dir=args.data_dir, seed=args.seed)
    except (D.DataError, ValueError, OSError) as e:
        raise CliError(str(e)) from None
    try:
        ds = D.check_shape(ds, b.input, net.node_shape(b.input), "input")
        batch = {b.input: ds.x_train[:args.batch_size]}
        if b.label is not None:
            D.check_shape(ds, b.label, net.node_shape(b.label), "target")
            batch[b.label] = ds.y_train[:args.batch_size]
    except D.DataError as e:
        raise CliError(str(e)) from None
    return batch, ds.name


def analyse_model(net, queries, batch: dict, **kwargs) -> list:
    """:func:`pcgraph.analyse` for each query whose clamped nodes ``batch`` holds; a query
    it cannot run is a dict ``{"query", "skipped": reason}``."""
    from ._analysis import analyse
    from ._query import compile_query

    out = []
    for name in queries:
        q = compile_query(net, name)
        missing = [n for n in q.clamp if n not in batch]
        if missing:
            out.append({"query": name, "skipped": f"the batch has no data for {', '.join(missing)}"})
            continue
        out.append(analyse(net, q, {n: batch[n] for n in q.clamp}, **kwargs))
    return out


def _fmt(x, spec=".4g") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def _text(res) -> str:
    if isinstance(res, dict):
        return f"query {res['query']}: skipped ({res['skipped']})"
    lines = [f"query {res.query} (batch {res.batch_size}, init {res.init}, {res.steps} "
             f"{res.inference} steps)"]
    w = max([len(k) for k in res.energy_init] + [4])
    lines.append(f"  {'node':<{w}}  {'E(t=0)':>11}  {'E(t=T)':>11}")
    for k in res.energy_init:
        lines.append(f"  {k:<{w}}  {_fmt(res.energy_init[k], '11.4e')}  "
                     f"{_fmt(res.energy_end.get(k), '11.4e')}")
    lines.append(f"  {'F':<{w}}  {_fmt(res.total_init, '11.4e')}  {_fmt(res.total_end, '11.4e')}")
    if res.hessian is not None:
        s = res.hessian
        lines.append(f"  activity Hessian at t={'0' if res.hessian_at == 'init' else 'T'} "
                     f"({s.method}, n = {s.n}{f', {s.matvecs} products' if s.matvecs else ''}): "
                     f"λ_min {_fmt(s.lambda_min)}, λ_max {_fmt(s.lambda_max)}, cond "
                     f"{_fmt(s.cond)}{'' if s.residual is None else f', residual {s.residual:.2g}'}"
                     f"{'' if s.converged else ' (not converged)'}")
    if res.alignment is not None:
        a = res.alignment
        per = ", ".join(f"{k} {_fmt(v, '.3f')}" for k, v in a.per_term.items())
        lines.append(f"  cos(PC update, BP gradient) = {_fmt(a.cosine, '.4f')}  (per term: {per})")
    if res.equilibrium is not None:
        e = res.equilibrium
        lines.append("  linear graph: system singular, no equilibrated energy" if e.singular else
                     f"  linear graph: equilibrated energy F* = {_fmt(e.energy, '.6g')}")
    lines += [f"  note: {n}" for n in res.notes]
    return "\n".join(lines)


def _figure(results, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    done = [r for r in results if not isinstance(r, dict)]
    fig, axes = plt.subplots(len(done), 1, figsize=(max(6, 0.35 * max(
        [len(r.energy_init) for r in done] + [1]) + 2), 3.2 * max(len(done), 1)), squeeze=False)
    for ax, r in zip(axes[:, 0], done):
        names = list(r.energy_init)
        x = np.arange(len(names))
        ax.bar(x - 0.2, [max(r.energy_init[k], 1e-30) for k in names], 0.4, label="t = 0")
        ax.bar(x + 0.2, [max(r.energy_end.get(k, 0.0), 1e-30) for k in names], 0.4,
               label=f"t = {r.steps}")
        ax.set_yscale("log")
        ax.set_xticks(x, names, rotation=90 if len(names) > 12 else 0, fontsize=7)
        sub = [f"query {r.query}"]
        if r.hessian is not None:
            sub.append(f"cond {_fmt(r.hessian.cond, '.3g')}")
        if r.alignment is not None:
            sub.append(f"cos(PC, BP) {_fmt(r.alignment.cosine, '.3f')}")
        ax.set_title(", ".join(sub), fontsize=9)
        ax.set_ylabel("energy per node")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _analyse(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise CliError("--batch-size must be at least 1")
    if args.output and Path(args.output).suffix.lower() != ".png":
        raise CliError(f"-o {args.output}: use a .png file name")
    model = _load(args.file, _params(args.param))
    names = [q.name for q in model.queries]
    queries = args.query or names
    unknown = [q for q in queries if q not in names]
    if unknown:
        raise CliError(f"model {model.name} has no query {', '.join(map(repr, unknown))}; it has: "
                       + (", ".join(names) or "none"))
    if not queries:
        raise CliError(f"model {model.name} declares no query to analyse")
    import warnings

    from ._network import build
    from ._query import compile_query

    net = build(model, seed=args.seed)
    ckpt = None
    if args.checkpoint:
        net, ckpt = _checkpointed(net, args.checkpoint)
    if args.data:
        batch, data_name = _data_batch(net, args)
    else:
        clamped = sorted({n for q in queries for n in compile_query(net, q).clamp})
        batch, data_name = _random_batch(net, clamped, args.batch_size, args.seed), None
    kw = dict(steps=args.steps, spectrum=not args.no_spectrum, hessian_at=args.hessian_at,
              method=args.method, tol=args.tol, maxiter=args.maxiter, ncv=args.ncv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            results = analyse_model(net, queries, batch, **kw)
        except ValueError as e:
            raise CliError(str(e).splitlines()[0]) from None
    for r in results:
        for w in ([] if isinstance(r, dict) else r.warnings):
            print(f"warning: {w}", file=sys.stderr)
    if all(isinstance(r, dict) for r in results):
        raise CliError("no query could be analysed: "
                       + "; ".join(f"{r['query']}: {r['skipped']}" for r in results))
    if args.output:
        try:
            _figure(results, args.output, f"{model.name}: energy per node"
                    + (f" ({data_name})" if data_name else " (random batch)"))
        except OSError as e:
            raise CliError(f"cannot write {args.output}: {e}") from None
        print(f"wrote {args.output}", file=sys.stderr)
    if args.json:
        doc = {"model": model.name, "file": args.file, "data": data_name, "checkpoint": ckpt,
               "batch_size": args.batch_size, "seed": args.seed,
               "queries": [r if isinstance(r, dict) else r.as_dict() for r in results]}
        print(json.dumps(_clean(doc), indent=2))
    else:
        print(f"{model.name}: {data_name or 'random'} batch of {args.batch_size}"
              + (f", weights from {ckpt}" if ckpt else f", weights seed {args.seed}"))
        print("\n".join(_text(r) for r in results))
    return EXIT_OK


def _clean(x):
    """JSON without NaN/inf (null instead)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


__all__ = ["configure_analyse", "run_analyse", "analyse_model", "EXIT_OK", "EXIT_MODEL",
           "EXIT_USAGE"]
