"""The names the language accepts, in one place (no JAX import: ``pcgraph check`` stays light).

The validator checks `.pcg` text against these sets; the engine's registries (activations and
weight initialisers in ``_network``, solvers in ``_infer``) are keyed by the same names, and a test
asserts they agree, so a name that validates always builds.
"""

ACTIVATIONS = frozenset(
    {"identity", "linear", "relu", "gelu", "tanh", "sigmoid", "softplus", "leaky_relu", "elu",
     "selu", "silu", "swish", "hard_tanh", "softmax"}
)
WEIGHT_INITS = frozenset(
    {"default", "lecun", "normal", "xavier", "glorot", "kaiming", "he", "zeros", "orthogonal"}
)
ENERGIES = frozenset({"gaussian", "categorical"})
PRIORS = frozenset({"gaussian"})
PARAMETERISATIONS = frozenset({"standard", "mupc"})
SOLVERS = frozenset({"gd", "euler", "heun", "tsit5"})
