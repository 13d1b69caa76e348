"""jaxtyping aliases for the engine's arrays (annotations only: shapes are documented, not checked
at run time).

Activities are a tuple with one array per node group ``[G, B, *shape]`` (``G`` nodes stacked, ``B``
the batch); a batch maps node names to ``[B, *shape]`` arrays (integer labels ``[B]``).
"""

from __future__ import annotations

from typing import Mapping, Union

from jaxtyping import Array, ArrayLike, Bool, Float, Int

#: one node group's activities
GroupActs = Float[Array, "members batch *shape"]
#: the activities of every node group (``Network.pack`` / ``unpack`` convert to and from names)
Acts = tuple[GroupActs, ...]
#: one node's values for a batch
NodeValues = Float[Array, "batch *shape"]
#: what a step or an evaluation is fed: ``{node: [B, *shape]}`` (labels may be integers ``[B]``)
Batch = Mapping[str, Union[Float[ArrayLike, "batch *shape"], Int[ArrayLike, " batch"]]]  # noqa: F821
#: a scalar on the device (an energy, a loss)
Scalar = Float[Array, ""]
#: a per-example vector (``[B]``)
PerExample = Float[Array, " batch"]
#: a flag on the device
Flag = Bool[Array, ""]
