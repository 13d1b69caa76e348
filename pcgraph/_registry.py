"""Every name pcgraph accepts, and every setting with its type, default and range, in one place.

Plain Python (no JAX): the validator (``pcgraph check``), the CLI (its ``choices=`` and help) and
the engine (``_config``, the builders) read these tables, so a name that validates always builds
and a default is written once. The engine's own tables (the activation functions in
``_kernels``, the weight initialisers in ``_network``, the init methods in ``_init``) are keyed by
these names, and ``tests/test_registry.py`` asserts they agree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

Scalar = Union[int, float, str, bool]

# ---------------------------------------------------------------------------------- vocabulary
ACTIVATIONS = frozenset(
    {"identity", "linear", "relu", "gelu", "tanh", "sigmoid", "softplus", "leaky_relu", "elu",
     "selu", "silu", "swish", "hard_tanh", "softmax"}
)
WEIGHT_INITS = frozenset(
    {"default", "lecun", "normal", "xavier", "glorot", "kaiming", "he", "zeros", "orthogonal"}
)
ENERGIES = frozenset({"gaussian", "categorical", "bernoulli", "laplace"})
# the arguments each energy takes (``energy = laplace(scale = 0.5)``), in positional order
ENERGY_ARGS = {"gaussian": ("precision",), "categorical": (), "bernoulli": (), "laplace": ("scale",)}
# ``gaussian(precision = learned)``: one learned precision per node; ``learned_diagonal``: one per
# element (a diagonal precision matrix)
LEARNED_PRECISIONS = frozenset({"learned", "learned_diagonal"})
# energies whose prediction is a distribution over the node's values, not a value: output leaves
# only, and their node's ``act`` must stay identity (the energy applies its own link function)
LINKED_ENERGIES = frozenset({"categorical", "bernoulli"})
PRIORS = frozenset({"gaussian"})
PARAMETERISATIONS = ("standard", "mupc")
#: inference solvers: ``gd`` (optax steps in a scan) and the diffrax gradient-flow solvers
SOLVERS = ("gd", "euler", "heun", "tsit5")
ODE_SOLVERS = ("euler", "heun", "tsit5")
#: optimiser names of the ``activity_optimizer`` and ``weight_optimizer`` settings
ACTIVITY_OPTIMIZERS = ("sgd", "momentum", "adam", "adamw", "rmsprop")
WEIGHT_OPTIMIZERS = ("adam", "adamw", "sgd", "momentum")
MOMENTUM = 0.9  # the ``momentum`` optimisers: optax.sgd(lr, momentum=0.9)
#: training algorithms: predictive coding, incremental PC, the backprop baseline
ALGORITHMS = ("pc", "ipc", "bp")
#: the activity-gradient convention (see ``_infer``): per-sample (PCX) or batch mean (JPC)
ACTIVITY_SCALES = ("sample", "batch")
#: activity initialisation methods a user may name (``mem_forward`` is an option, not a name)
INIT_METHODS = ("auto", "zero", "random", "null", "forward", "avg", "mem", "amortised", "sweep")
#: the initialisation methods that carry state between batches
STATEFUL_INITS = ("null", "avg", "mem", "amortised")
#: ``precision``: the float formats weights and activities are stored in
PRECISIONS = ("fp32", "bf16")
#: ``steps_per_dispatch = 0`` (automatic): at most this many steps per dispatch, and at most this
#: many bytes of stacked batches on the device (``_chunked.steps_per_dispatch``)
AUTO_STEPS_PER_DISPATCH = 32
AUTO_DISPATCH_BYTES = 64 * 2 ** 20
#: pixel scaling of image data sets (``data.load(normalize=...)``, setting ``normalize``)
NORMALIZATIONS = ("standardize", "unit")

#: initialiser options (``init_options`` / ``--init-option``) and their defaults (see ``_init``)
INIT_OPTIONS: Mapping[str, Scalar | None] = {
    "random_mean": 0.0, "random_std": 1.0,
    "avg_m": None, "avg_hybrid": False, "avg_label": None,
    "mem_patterns": 256, "mem_heads": 1, "mem_embed": 128, "mem_delta": 200.0,
    "mem_combine": "mean", "mem_ridge": 0.0, "mem_ref_steps": 100, "mem_logit_std": 2.0,
    "mem_forward": False, "mem_obs": None,
    "learned_lr": 1e-2,
}

# ---------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """A model setting (``settings { ... }`` in ``.pcg``; most have a CLI flag): its default
    (whose type is the setting's type), its allowed names (string settings) and its range."""

    name: str
    default: Scalar
    help: str
    choices: tuple[str, ...] | None = None
    minimum: str | None = None  # "nonnegative" | "positive"


SETTINGS: Mapping[str, Setting] = {s.name: s for s in (
    Setting("parameterisation", "standard", "weight parameterisation", PARAMETERISATIONS),
    Setting("steps", 20, "inference steps T", minimum="nonnegative"),
    Setting("activity_lr", 0.1, "activity learning rate (the step size dt of an ODE solver)",
            minimum="positive"),
    Setting("activity_optimizer", "sgd", "activity optimiser", ACTIVITY_OPTIMIZERS),
    Setting("weight_lr", 1e-3, "weight learning rate", minimum="nonnegative"),
    Setting("weight_optimizer", "adam", "weight optimiser", WEIGHT_OPTIMIZERS),
    Setting("weight_decay", 0.0, "decoupled weight decay", minimum="nonnegative"),
    Setting("init", "auto", "default activity initialisation", INIT_METHODS),
    Setting("solver", "gd", "inference solver", SOLVERS),
    Setting("seed", 0, "seed of the parameters and the batch order", minimum="nonnegative"),
    Setting("epochs", 10, "training epochs", minimum="positive"),
    Setting("batch_size", 64, "training batch size", minimum="positive"),
    Setting("steps_per_dispatch", 0, "training steps per dispatch, a lax.scan over a chunk of "
            "batches (0: automatic)", minimum="nonnegative"),
    Setting("precision", "fp32", "storage of weights and activities: fp32, or bf16 (energies "
            "and matmul accumulation in fp32)", PRECISIONS),
    Setting("normalize", "standardize",
            "pixel scaling: standardize (per-channel mean 0, std 1) or unit ([0, 1])",
            NORMALIZATIONS),
)}

#: ``{setting: default}``
DEFAULT_SETTINGS: Mapping[str, Scalar] = {k: s.default for k, s in SETTINGS.items()}
EVAL_BATCH_SIZE = 256  # evaluation batch size (not a model setting)
