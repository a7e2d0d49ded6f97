"""The frozen CLIP text tower of VLT: class names with DenseCLIP's learnable context to text
embeddings.

This is the only place in VLT that builds open_clip's text side. Only the text tower is built
(token embedding, position embedding, transformer, final norm, projection, causal mask); the
visual tower of the CLIP model is never instantiated.
"""
import logging
from typing import Dict, Optional, Sequence, Tuple

import open_clip
import torch
from open_clip.model import CLIPTextCfg, _build_text_tower
from open_clip.transformer import TextTransformer
from torch import nn

from vlt_common.modeling.backbone.weights import read_checkpoint

__all__ = ["CLIPTextEncoder", "load_clip_text_state_dict"]

logger = logging.getLogger(__name__)

# Top-level names of the text tower in open_clip's CLIP / OpenAI state dicts (CustomTextCLIP and
# EVA-CLIP keep the same names under "text.").
_TEXT_KEYS = (
    "token_embedding",
    "positional_embedding",
    "transformer",
    "ln_final",
    "text_projection",
)
_SUPPORTED_FORMATS = (
    "an OpenAI CLIP TorchScript archive (ViT-B-16.pt), an open_clip CLIP state dict (.bin/.pt/"
    ".safetensors; text keys at the top level or under 'text.'), or an EVA-CLIP checkpoint "
    "(EVA02_CLIP_*_s4B.pt, text keys under 'text.')"
)


def load_clip_text_state_dict(path: str) -> Tuple[Dict[str, torch.Tensor], bool]:
    """
    Read the text-tower weights of a CLIP checkpoint, in the key layout of open_clip's
    ``TextTransformer`` and in float32.

    Args:
        path (str): an OpenAI CLIP TorchScript archive, an open_clip state dict (.bin, .pt,
            .safetensors; text keys at the top level or under "text."), or an EVA-CLIP
            checkpoint (text keys under "text."). Files are read by
            :func:`vlt_common.modeling.backbone.weights.read_checkpoint`.

    Returns:
        tuple: (state dict, whether the file is an OpenAI TorchScript archive; OpenAI's models
        were trained with QuickGELU).
    """
    checkpoint, file_format = read_checkpoint(path, expected=_SUPPORTED_FORMATS)
    if any(k.startswith("text.") for k in checkpoint):
        text = {k[len("text.") :]: v for k, v in checkpoint.items() if k.startswith("text.")}
    elif "token_embedding.weight" in checkpoint:
        text = {k: v for k, v in checkpoint.items() if k.split(".")[0] in _TEXT_KEYS}
    else:
        raise ValueError(
            f"{path}: no CLIP text-tower weights found (neither 'token_embedding.weight' nor "
            f"'text.token_embedding.weight'). Supported: {_SUPPORTED_FORMATS}."
        )
    # OpenAI archives hold float16 weights; the tower runs in float32 (autocast handles AMP)
    text = {k: v.float() if v.is_floating_point() else v for k, v in text.items()}
    return text, file_format == "torchscript"


class CLIPTextEncoder(nn.Module):
    """
    Frozen open_clip text tower plus its tokenizer.

    All parameters have ``requires_grad=False`` and the module stays in eval mode when its parent
    calls ``.train()``. Gradients flow *through* the tower in :meth:`encode_with_context` to the
    learnable context, never into the tower's weights.
    """

    def __init__(
        self,
        arch: str,
        *,
        pretrained: Optional[str] = "",
        width: int = 0,
        layers: int = 0,
        heads: int = 0,
        embed_dim: int = 0,
        quick_gelu: Optional[bool] = None,
    ):
        """
        Args:
            arch (str): open_clip architecture name ("ViT-B-16", "ViT-L-14", "EVA02-L-14", ...);
                its text tower must be a CLIP text transformer (BPE tokenizer, EOT pooling).
            pretrained (str): local weights file ("" or None: random initialization); see
                :func:`load_clip_text_state_dict` for the formats.
            width, layers, heads (int): shrink the text transformer (tests); 0 keeps the
                architecture's value.
            embed_dim (int): output width D; 0 keeps the architecture's value.
            quick_gelu (bool or None): the MLP activation. None: QuickGELU for OpenAI TorchScript
                archives (OpenAI trained with it), otherwise the architecture's setting (use the
                "-quickgelu" architectures for OpenAI weights stored as state dicts).
        """
        super().__init__()
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise ValueError(
                f"Unknown open_clip architecture {arch!r}; see open_clip.list_models()"
            )
        text_cfg = dict(model_cfg["text_cfg"])
        unsupported = [
            key
            for key in ("hf_model_name", "hf_tokenizer_name", "embed_cls")
            if text_cfg.get(key)
        ]
        if unsupported or text_cfg.get("pool_type", "argmax") != "argmax":
            raise ValueError(
                f"{arch}: only CLIP-style text towers (BPE tokenizer, pooling at the EOT token) "
                f"are supported; its text config sets {unsupported or text_cfg['pool_type']}"
            )
        for key, value in (("width", width), ("layers", layers), ("heads", heads)):
            if value:
                text_cfg[key] = value
        out_dim = embed_dim or model_cfg["embed_dim"]

        state_dict, is_openai = load_clip_text_state_dict(pretrained) if pretrained else ({}, False)
        if quick_gelu is None:
            quick_gelu = is_openai or bool(model_cfg.get("quick_gelu", False))

        # open_clip's own text-tower builder (the one CLIP and CustomTextCLIP call); going through
        # create_model would instantiate the visual tower too, only to delete it.
        self.text: TextTransformer = _build_text_tower(
            out_dim, CLIPTextCfg(**text_cfg), quick_gelu=quick_gelu
        )
        if state_dict:
            try:
                self.text.load_state_dict(state_dict, strict=True)
            except RuntimeError as e:
                raise ValueError(
                    f"{pretrained}: the text-tower weights do not fit {arch} (width "
                    f"{text_cfg['width']}, layers {text_cfg['layers']}, embed_dim {out_dim}): {e}"
                ) from e
            logger.info("Loaded the %s text tower from %s", arch, pretrained)

        self.tokenizer = open_clip.get_tokenizer(arch)
        self.requires_grad_(False)
        self.train(False)
        self._token_cache: Dict[Tuple[Tuple[str, ...], int], torch.Tensor] = {}

    @property
    def width(self) -> int:
        """W, the width of the token embeddings (and of the learnable context)."""
        return self.text.width

    @property
    def embed_dim(self) -> int:
        """D, the width of the output embeddings."""
        return self.text.output_dim

    @property
    def context_length(self) -> int:
        """Number of token positions of the tower (77 for CLIP)."""
        return self.text.context_length

    def train(self, mode: bool = True):
        # frozen: dropout and the like stay off whatever the parent does
        return super().train(False)

    def _tokenize(self, texts: Sequence[str], length: int) -> torch.Tensor:
        for text in texts:
            needed = len(self.tokenizer.encode(text)) + 2  # + SOT and EOT
            if needed > length:
                raise ValueError(
                    f"text {text!r} needs {needed} tokens, more than the {length} available"
                )
        device = self.text.token_embedding.weight.device
        return self.tokenizer(list(texts), context_length=length).to(device)

    def _project(self, pooled: torch.Tensor) -> torch.Tensor:
        projection = self.text.text_projection
        if projection is None:
            return pooled
        if isinstance(projection, nn.Linear):
            return projection(pooled)
        return pooled @ projection

    def prompt_tokens(self, class_names: Sequence[str], num_context: int) -> torch.Tensor:
        """
        The token ids of the prompts without their context: ``[SOT, tokens of "<name_k>", EOT,
        0 ...]`` per class (the bare name, as DenseCLIP tokenizes it), cached per (class names,
        num_context) and device.

        Args:
            class_names (Sequence[str]): K class names.
            num_context (int): n, the number of context vectors inserted after SOT.

        Returns:
            Tensor: int64 [K, context_length - n] on the tower's device.
        """
        key = (tuple(class_names), num_context)
        tokens = self._token_cache.get(key)
        device = self.text.token_embedding.weight.device
        if tokens is None or tokens.device != device:
            tokens = self._tokenize(list(class_names), self.context_length - num_context)
            self._token_cache[key] = tokens
        return tokens

    def encode_with_context(
        self, context: torch.Tensor, class_names: Sequence[str]
    ) -> torch.Tensor:
        """
        DenseCLIP's learnable-context prompts (``CLIPTextContextEncoder``): the token sequence of
        class k is ``[SOT, ctx_1 .. ctx_n, tokens of "<name_k>", EOT, padding]``, i.e. the n
        context vectors take positions 1..n and the bare class name follows (no template, no
        period, as DenseCLIP tokenizes the class names). The embedding is read at the EOT
        position (shifted by n) and projected; it is *not* normalized, since DenseCLIP adds the
        context decoder's refinement to the raw embeddings and normalizes afterwards.

        Args:
            context (Tensor): [n_ctx, W] learnable context vectors.
            class_names (Sequence[str]): K class names.

        Returns:
            Tensor: [K, D], not normalized; differentiable w.r.t. ``context`` only.
        """
        if context.dim() != 2 or context.shape[1] != self.width:
            raise ValueError(
                f"context must be [n_ctx, {self.width}], got {tuple(context.shape)}"
            )
        n_ctx = context.shape[0]
        if n_ctx > self.context_length - 3:
            raise ValueError(
                f"{n_ctx} context vectors leave no room for a class name in "
                f"{self.context_length} positions"
            )
        tokens = self.prompt_tokens(class_names, n_ctx)
        num_classes = tokens.shape[0]

        embedded = self.text.token_embedding(tokens)  # [K, L - n, W]
        context = context.to(embedded.dtype).unsqueeze(0).expand(num_classes, -1, -1)
        x = torch.cat([embedded[:, :1], context, embedded[:, 1:]], dim=1)  # [K, L, W]
        x = x + self.text.positional_embedding
        x = self.text.transformer(x, attn_mask=self.text.attn_mask)
        x = self.text.ln_final(x)
        # the EOT token has the largest id; it moved n positions to the right
        eot = tokens.argmax(dim=-1) + n_ctx
        pooled = x[torch.arange(num_classes, device=x.device), eot]  # [K, W]
        return self._project(pooled)
