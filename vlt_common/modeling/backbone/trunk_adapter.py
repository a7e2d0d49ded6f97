"""
The interface between :class:`CLIPViTBackbone` and one family of ViT trunks.

A trunk is the unmodified vision tower built by open_clip or timm (``open_clip``'s
``VisionTransformer``, timm's ``VisionTransformer``, ``Eva`` and ``VisionTransformerSAM``). The
families differ in attribute names, in how tokens enter the blocks and in their checkpoints' key
names; a :class:`TrunkAdapter` hides those differences so that the backbone drives every family
with one loop over the blocks. Adapters hold no state: one instance per family is registered and
looked up from the trunk's type with :func:`get_trunk_adapter`.
"""
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "TrunkAdapter",
    "register_trunk_adapter",
    "get_trunk_adapter",
    "square_size",
    "PATCH_DROP_MESSAGE",
    "prepare_trunk",
]

_ADAPTERS: List["TrunkAdapter"] = []

#: The error of :meth:`TrunkAdapter.check_trunk` for a trunk built with patch dropout.
PATCH_DROP_MESSAGE = (
    "The trunk was built with patch dropout, which drops tokens of the dense feature maps; "
    "build it without (timm: patch_drop_rate=0, open_clip: patch_dropout=0)."
)


class TrunkAdapter:
    """
    How the backbone embeds an image, runs the blocks and loads the weights of one trunk family.

    Tokens travel between blocks as ``[B, N, C]`` with ``num_prefix_tokens(trunk)`` class /
    register tokens first and the patch tokens in row-major order after them.

    Subclasses set :attr:`trunk_type` and the name tuples, and implement :meth:`embed`,
    :meth:`convert_checkpoint` and :meth:`check_trunk`; the defaults of the other methods follow
    timm's attribute names.
    """

    #: The trunk class this adapter drives (instances of subclasses match too).
    trunk_type: type = nn.Module
    #: Human-readable family name, for messages.
    family: str = ""
    #: Trunk-relative names of the patch / position / class-token embeddings: layer id 0 and frozen
    #: with the first blocks.
    embedding_names: Tuple[str, ...] = ()
    #: Trunk-relative name of the block list; block ``i``'s parameters are under ``<name>.<i>.``.
    blocks_name: str = "blocks"
    #: Trunk attributes after the last block (final norm, pooling, projection, classifier). Dense
    #: features are taken from the blocks, so :meth:`strip_head` removes these modules and the
    #: weight loader skips their checkpoint keys.
    head_names: Tuple[str, ...] = ()
    #: The part of :attr:`head_names` that is CLIP's image-side projection: the final norm and
    #: the projection to the joint image-text space. Kept (not stripped, loaded from the
    #: checkpoint) when the backbone is built with ``clip_head=True``; see :meth:`clip_embed`.
    clip_head_names: Tuple[str, ...] = ()

    # ----------------------------------------------------------------------------------------------
    # Structure
    # ----------------------------------------------------------------------------------------------
    def check_trunk(self, trunk: nn.Module) -> None:
        """
        Raise a ValueError if ``trunk`` was built in a way the backbone cannot use (e.g. without
        dynamic input size, or with patch dropout, which would drop tokens of the dense maps).
        """
        raise NotImplementedError

    def timm_create_kwargs(self, native_trunk: nn.Module, depth: int) -> Dict:
        """
        Extra keyword arguments for ``timm.create_model`` (timm families only; the builder calls
        this for every timm trunk).

        Args:
            native_trunk (nn.Module): the architecture at its defaults (on the meta device).
            depth (int): the number of blocks the trunk is built with.

        Returns:
            dict
        """
        return {}

    def strip_head(self, trunk: nn.Module, keep: Sequence[str] = ()) -> None:
        """
        Remove the modules listed in :attr:`head_names` from ``trunk`` (in place; idempotent), so
        that they hold no parameters that would never receive a gradient.

        Args:
            keep (sequence[str]): names of :attr:`head_names` to leave in place (the
                :attr:`clip_head_names` when the CLIP projection is used).
        """
        for name in self.head_names:
            if name in keep:
                continue
            value = getattr(trunk, name, None)
            if isinstance(value, nn.Parameter):
                setattr(trunk, name, None)
            elif isinstance(value, nn.Module) and not isinstance(value, nn.Identity):
                setattr(trunk, name, nn.Identity())

    def blocks(self, trunk: nn.Module) -> Sequence[nn.Module]:
        """Returns: the indexable sequence of transformer blocks."""
        return trunk.get_submodule(self.blocks_name)

    def embed_dim(self, trunk: nn.Module) -> int:
        """Returns: the token width C."""
        return int(trunk.embed_dim)

    def num_heads(self, trunk: nn.Module) -> int:
        """Returns: the number of attention heads of the first block."""
        return int(self.blocks(trunk)[0].attn.num_heads)

    def patch_size(self, trunk: nn.Module) -> int:
        """Returns: the (square) patch size in pixels."""
        return square_size(trunk.patch_embed.patch_size, "patch size")

    def grid_size(self, trunk: nn.Module) -> Tuple[int, int]:
        """Returns: the grid (rows, columns) of the trunk's stored position embeddings."""
        return tuple(int(s) for s in trunk.patch_embed.grid_size)

    def num_prefix_tokens(self, trunk: nn.Module) -> int:
        """Returns: number of class / register tokens before the patch tokens."""
        return int(trunk.num_prefix_tokens)

    # ----------------------------------------------------------------------------------------------
    # Forward
    # ----------------------------------------------------------------------------------------------
    def embed(self, trunk: nn.Module, x: torch.Tensor) -> Tuple[torch.Tensor, Dict]:
        """
        Patch-embed an image batch and add the (interpolated) position embeddings.

        Args:
            trunk (nn.Module):
            x (Tensor): [B, 3, H, W] with H and W multiples of the patch size.

        Returns:
            tuple[Tensor, dict]: tokens [B, P + h * w, C] (P prefix tokens, h = H / patch,
            w = W / patch), and the keyword arguments :meth:`run_block` needs (e.g. rotary
            embeddings for this grid).
        """
        raise NotImplementedError

    def run_block(self, block: nn.Module, x: torch.Tensor, **kwargs) -> torch.Tensor:
        """
        Args:
            block (nn.Module): one of :meth:`blocks`.
            x (Tensor): tokens [B, N, C].
            kwargs: what :meth:`embed` returned next to the tokens.

        Returns:
            Tensor: tokens [B, N, C].
        """
        return block(x)

    def clip_embed(
        self, trunk: nn.Module, tokens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """
        CLIP's own image-side projection (final norm, then projection) of the last block's
        tokens, as DenseCLIP computes its ViT pixel embeddings; needs the modules of
        :attr:`clip_head_names` (``strip_head(trunk, keep=clip_head_names)``).

        Args:
            trunk (nn.Module):
            tokens (Tensor): [B, P + h * w, C], the output of the last block.

        Returns:
            tuple[Tensor, Tensor]: CLIP's pooled image embedding [B, D] and the projected patch
            tokens [B, h * w, D].
        """
        raise ValueError(
            f"The {self.family} trunk has no CLIP image projection (final norm + projection to "
            "the image-text space); the DenseCLIP text head needs a CLIP image tower."
        )

    # ----------------------------------------------------------------------------------------------
    # Parameters and checkpoints
    # ----------------------------------------------------------------------------------------------
    def layer_id(self, name: str, num_layers: int) -> int:
        """
        Layer id of a trunk parameter for layer-wise lr decay, with the semantics of Detectron2's
        ``get_vit_lr_decay_rate``: embeddings 0, block ``i`` -> ``i + 1``, anything else
        ``num_layers + 1``.

        Args:
            name (str): parameter name relative to the trunk (e.g. ``"blocks.3.attn.qkv.weight"``).
            num_layers (int): number of blocks.

        Returns:
            int
        """
        prefix = self.blocks_name + "."
        if name.startswith(prefix):
            return int(name[len(prefix) :].split(".", 1)[0]) + 1
        if _matches(name, self.embedding_names):
            return 0
        return num_layers + 1

    def is_head_key(self, key: str, keep: Sequence[str] = ()) -> bool:
        """
        Args:
            key (str): a converted checkpoint key.
            keep (sequence[str]): head modules that stay (the :attr:`clip_head_names` with the
                CLIP projection).

        Returns:
            bool: whether ``key`` belongs to a module of :attr:`head_names` not in ``keep``.
        """
        return _matches(key, self.head_names) and not _matches(key, keep)

    def convert_checkpoint(
        self, state_dict: Dict[str, torch.Tensor], trunk: nn.Module
    ) -> Dict[str, torch.Tensor]:
        """
        Map a checkpoint's keys to the trunk's parameter names and resample its patch kernel and
        position embeddings to the trunk's patch size and grid.

        Args:
            state_dict (dict[str, Tensor]): the tensors of a checkpoint file, unwrapped (full CLIP
                models keep their ``visual.`` / ``text.`` prefixes; the adapter selects its part).
            trunk (nn.Module): the trunk the weights are for.

        Returns:
            dict[str, Tensor]: trunk-relative keys. Keys that match no trunk parameter are kept
            (the loader reports them).
        """
        raise NotImplementedError


def prepare_trunk(trunk: nn.Module, clip_head: bool = False) -> TrunkAdapter:
    """
    Make a trunk ready for :class:`CLIPViTBackbone`: remove its pooling head
    (:meth:`TrunkAdapter.strip_head`) and check how it was built (:meth:`TrunkAdapter.check_trunk`).
    The backbone calls this once, on whatever trunk it is given.

    Args:
        trunk (nn.Module): a vision tower with a registered adapter.
        clip_head (bool): keep the final norm and CLIP projection (:attr:`clip_head_names`).

    Returns:
        TrunkAdapter: the trunk's adapter.
    """
    adapter = get_trunk_adapter(trunk)
    adapter.strip_head(trunk, keep=adapter.clip_head_names if clip_head else ())
    adapter.check_trunk(trunk)
    return adapter


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def square_size(size, what: str) -> int:
    """
    Args:
        size (int or tuple[int, int]): a size as timm / open_clip store it.
        what (str): what the size is, for the error message.

    Returns:
        int: the side of a square size.

    Raises:
        ValueError: the size is not square.
    """
    if isinstance(size, int):
        return size
    if size[0] != size[1]:
        raise ValueError(f"Only square {what}s are supported, got {tuple(size)}.")
    return int(size[0])


def register_trunk_adapter(adapter_cls):
    """
    Class decorator: register one instance of a :class:`TrunkAdapter` subclass. Later
    registrations take precedence, so a subclass of a trunk type can get its own adapter.
    """
    _ADAPTERS.insert(0, adapter_cls())
    return adapter_cls


def get_trunk_adapter(trunk: nn.Module) -> TrunkAdapter:
    """
    Args:
        trunk (nn.Module): a vision tower.

    Returns:
        TrunkAdapter: the adapter registered for the trunk's class.

    Raises:
        TypeError: if no adapter handles this class.
    """
    for adapter in _ADAPTERS:
        if isinstance(trunk, adapter.trunk_type):
            return adapter
    supported = ", ".join(
        f"{a.trunk_type.__module__}.{a.trunk_type.__qualname__}" for a in _ADAPTERS
    )
    raise TypeError(f"No trunk adapter for {type(trunk).__qualname__}; supported: {supported}.")
