"""
The backbone contract: what VLT's training code asks of ``model.backbone``.

Detectron2's :class:`~detectron2.modeling.Backbone` covers the forward pass and the output shapes.
VLT's solver, hooks, ``VLTSeg`` and the VLTDet pyramid need more; a backbone offers it by having
these members (structural typing: :class:`CLIPViTBackbone` and VLTDet's
``VLTSimpleFeaturePyramid`` implement them, any other backbone may):

- :class:`VLTBackbone` (required by ``SOLVER.LAYER_DECAY < 1`` and by the frozen-backbone warm-up):
  ``num_layers``, ``layer_id(name)``, ``set_trunk_trainable(flag)``;
- :class:`ReinTokenSource` (optional; ``VLTSeg``'s query linking in Rein mode): the Rein tokens
  of every layer;
- :class:`AdapterParameters` (optional; the solver): the names of the parameters that are
  adapters (e.g. Rein) and train at the heads' learning rate rather than the backbone's.

The classes are ``typing.Protocol``\\ s checkable with ``isinstance``; they hold no code.
"""
from typing import Optional, Protocol, Set, runtime_checkable

import torch

__all__ = ["VLTBackbone", "ReinTokenSource", "AdapterParameters"]


@runtime_checkable
class VLTBackbone(Protocol):
    """What the solver (layer-wise lr decay) and the hooks (frozen warm-up) ask of a backbone."""

    #: Number of transformer blocks of the trunk.
    num_layers: int

    def layer_id(self, name: str) -> int:
        """
        Layer id of a parameter for layer-wise lr decay, Detectron2's ``get_vit_lr_decay_rate``
        semantics.

        Args:
            name (str): parameter name relative to the backbone.

        Returns:
            int: 0 for the embeddings, ``i + 1`` for block ``i``, ``num_layers + 1`` for anything
            that trains like the heads (neck, pyramid, adapters).
        """
        ...

    def set_trunk_trainable(self, flag: bool) -> None:
        """
        Switch ``requires_grad`` of the trunk parameters that the configuration lets train
        (the frozen-backbone warm-up); the others stay frozen.

        Args:
            flag (bool):
        """
        ...


@runtime_checkable
class ReinTokenSource(Protocol):
    """Optional: the Rein tokens that ``VLTSeg`` links to the decoder queries."""

    def layer_tokens(self) -> Optional[torch.Tensor]:
        """
        Returns:
            Tensor or None: Rein's tokens of every layer, [num_layers, m, C]; None when the
            backbone runs without Rein.
        """
        ...


@runtime_checkable
class AdapterParameters(Protocol):
    """Optional: which backbone parameters are adapters that train at the heads' lr."""

    def adapter_parameter_names(self) -> Set[str]:
        """
        Returns:
            set[str]: names relative to the backbone of the parameters that the solver puts at
            the base learning rate (no backbone multiplier, no layer decay).
        """
        ...
