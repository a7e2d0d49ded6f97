"""Config keys of VLTSeg: Mask2Former (official key names), the DenseCLIP text head, the semantic
mapper and sliding-window / multi-scale inference.

Call after :func:`vlt_common.config.add_vlt_common_config`.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_vltseg_config"]


def add_vltseg_config(cfg):
    """
    Add the VLTSeg keys. Names under ``MODEL.MASK_FORMER`` and ``MODEL.SEM_SEG_HEAD`` match
    official Mask2Former's, so its yaml files read the same way.

    Args:
        cfg (CfgNode): edited in place.
    """
    # ---------------------------------------------------------------------------------------------
    # Mask2Former
    # ---------------------------------------------------------------------------------------------
    cfg.MODEL.MASK_FORMER = CN()
    # Registered name of the transformer decoder.
    cfg.MODEL.MASK_FORMER.TRANSFORMER_DECODER_NAME = "MultiScaleMaskedTransformerDecoder"
    # Which pixel-decoder output feeds the decoder: "multi_scale_pixel_decoder" (the 3 levels).
    cfg.MODEL.MASK_FORMER.TRANSFORMER_IN_FEATURE = "multi_scale_pixel_decoder"
    # Add the losses of every intermediate decoder layer.
    cfg.MODEL.MASK_FORMER.DEEP_SUPERVISION = True
    # Classification weight of the "no object" class.
    cfg.MODEL.MASK_FORMER.NO_OBJECT_WEIGHT = 0.1
    # Loss weights (also the matching costs): classification, mask BCE, mask dice.
    cfg.MODEL.MASK_FORMER.CLASS_WEIGHT = 2.0
    cfg.MODEL.MASK_FORMER.MASK_WEIGHT = 5.0
    cfg.MODEL.MASK_FORMER.DICE_WEIGHT = 5.0
    # Attention heads of the decoder.
    cfg.MODEL.MASK_FORMER.NHEADS = 8
    # Dropout inside the deformable encoder of the pixel decoder (official: only there; the
    # masked-attention decoder hard-codes 0.0). Official semantic configs: 0.0.
    cfg.MODEL.MASK_FORMER.DROPOUT = 0.0
    # Hidden size of the decoder feed-forward networks.
    cfg.MODEL.MASK_FORMER.DIM_FEEDFORWARD = 2048
    # Layers of MaskFormer (v1)'s transformer encoder. Official Mask2Former reads it only in
    # MaskFormer's decoder, never in MultiScaleMaskedTransformerDecoder: accepted so official yaml
    # files merge, and (as there) without effect; the pixel decoder's encoder depth is
    # MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS. Official semantic configs: 0.
    cfg.MODEL.MASK_FORMER.ENC_LAYERS = 0
    # Decoder layers + 1: the extra one is the prediction from the learnable queries alone.
    cfg.MODEL.MASK_FORMER.DEC_LAYERS = 10
    # Pre-norm instead of post-norm decoder layers.
    cfg.MODEL.MASK_FORMER.PRE_NORM = False
    # Width of the queries and of the decoder.
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 256
    # Number of queries.
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 100
    # Always add a 1x1 input projection in front of the decoder, even if widths already match.
    cfg.MODEL.MASK_FORMER.ENFORCE_INPUT_PROJ = False
    # Pad images to a multiple of this (-1: the backbone's size_divisibility).
    cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY = 32
    # Points sampled per mask for matching and for the mask losses (112 * 112).
    cfg.MODEL.MASK_FORMER.TRAIN_NUM_POINTS = 112 * 112
    # Importance sampling of the loss points: oversample k*N candidates, take beta*N of them
    # where the prediction is most uncertain, the rest uniformly.
    cfg.MODEL.MASK_FORMER.OVERSAMPLE_RATIO = 3.0
    cfg.MODEL.MASK_FORMER.IMPORTANCE_SAMPLE_RATIO = 0.75
    # Inference outputs (official names). VLTSeg does semantic segmentation only: SEMANTIC_ON
    # must be True and INSTANCE_ON / PANOPTIC_ON False (other values are rejected when the model
    # is built).
    cfg.MODEL.MASK_FORMER.TEST = CN()
    cfg.MODEL.MASK_FORMER.TEST.SEMANTIC_ON = True
    cfg.MODEL.MASK_FORMER.TEST.INSTANCE_ON = False
    cfg.MODEL.MASK_FORMER.TEST.PANOPTIC_ON = False
    # Score thresholds of official panoptic / instance inference; semantic inference does not
    # read them (as officially). Official semantic configs: 0.8 and 0.8.
    cfg.MODEL.MASK_FORMER.TEST.OBJECT_MASK_THRESHOLD = 0.0
    cfg.MODEL.MASK_FORMER.TEST.OVERLAP_THRESHOLD = 0.0
    # Resize the mask logits to the output size before the semantic inference (sigmoid x
    # softmax) instead of resizing the class scores after it (official key; default False).
    # Only with whole-image inference (no TEST.SLIDING_WINDOW, no TEST.AUG).
    cfg.MODEL.MASK_FORMER.TEST.SEM_SEG_POSTPROCESSING_BEFORE_INFERENCE = False

    # MODEL.SEM_SEG_HEAD exists in Detectron2's defaults: VLTSeg adds keys to it and sets the
    # existing ones (NAME "MaskFormerHead", IN_FEATURES res2..res5, COMMON_STRIDE 4, CONVS_DIM 256,
    # NORM "GN", NUM_CLASSES 19, IGNORE_VALUE 255) in configs/Base-VLTSeg.yaml, so that building a
    # config never changes a Detectron2 default that another task (VLTDet) inherits.
    # Registered pixel decoder.
    cfg.MODEL.SEM_SEG_HEAD.PIXEL_DECODER_NAME = "MSDeformAttnPixelDecoder"
    # Of the backbone maps in IN_FEATURES, the ones the deformable encoder attends over (the
    # other, finer ones are merged in by an FPN).
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES = ["res3", "res4", "res5"]
    # Number of deformable encoder layers.
    cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS = 6
    # Width of the mask embeddings.
    cfg.MODEL.SEM_SEG_HEAD.MASK_DIM = 256
    # Sampling points per head, per level in the deformable attention (official name; 4).
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_POINTS = 4
    # Attention heads in the deformable encoder (official name; 8).
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_N_HEADS = 8
    # Hidden width of the deformable encoder's feed-forward networks (channels). Official
    # Mask2Former hard-codes 1024 here, independent of MODEL.MASK_FORMER.DIM_FEEDFORWARD.
    cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_DIM_FEEDFORWARD = 1024

    # Detectron2 ResNet keys that official Mask2Former configs set (added there by DeepLab's
    # config). Detectron2's build_resnet_backbone always builds the "basic" stem with plain
    # res5 dilation; other values need DeepLab's backbone and are rejected when VLTSeg is built.
    # Official Mask2Former R50/R101 configs: "basic" and [1, 1, 1].
    cfg.MODEL.RESNETS.STEM_TYPE = "basic"
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 1, 1]

    # ---------------------------------------------------------------------------------------------
    # DenseCLIP-style pixel-text matching (VLTSeg's optional auxiliary loss)
    # ---------------------------------------------------------------------------------------------
    cfg.MODEL.VLTSEG = CN()
    # Class names of the label space, in train-id order (len == MODEL.SEM_SEG_HEAD.NUM_CLASSES).
    # They name the classes of the model (and are the prompts of the text head); passed in
    # explicitly so the model needs no dataset catalog. Empty: the 19 Cityscapes classes
    # (vlt_common.label_spaces.CITYSCAPES_19_CLASSES).
    cfg.MODEL.VLTSEG.CLASS_NAMES = []
    cfg.MODEL.VLTSEG.TEXT_HEAD = CN()
    # Turn DenseCLIP's text head and the pixel-text matching loss on. Its pixel embeddings are
    # CLIP's own image projection of the final block's tokens, so it needs
    # MODEL.VLT_BACKBONE.CLIP_HEAD: True (an open_clip CLIP / EVA-CLIP tower).
    cfg.MODEL.VLTSEG.TEXT_HEAD.ENABLED = False
    # open_clip model whose (frozen) text tower encodes the prompts; must match the CLIP the
    # backbone comes from so that the two embedding spaces agree.
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_ARCH = "ViT-B-16"
    # Local weights for the text tower (usually the same file as MODEL.VLT_BACKBONE.PRETRAINED);
    # "" keeps the random initialization (tests).
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_PRETRAINED = ""
    # Shrink the text transformer (tiny test models): width, layers and attention heads; 0 keeps
    # the architecture's value. Pre-trained weights of the full tower do not fit a shrunk one.
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_WIDTH = 0
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_LAYERS = 0
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEXT_HEADS = 0
    # Number of learnable context vectors placed before the bare class name (DenseCLIP: 8).
    cfg.MODEL.VLTSEG.TEXT_HEAD.CONTEXT_LENGTH = 8
    # Layers of the context-aware (visual-to-text) refinement decoder (DenseCLIP's ViT: 3).
    cfg.MODEL.VLTSEG.TEXT_HEAD.REFINE_LAYERS = 3
    # Initial value of gamma, the residual scale of the text refinement (DenseCLIP: 1e-4).
    cfg.MODEL.VLTSEG.TEXT_HEAD.GAMMA_INIT = 1e-4
    # Temperature tau of the pixel-text score map: cosine / tau (DenseCLIP: 0.07).
    cfg.MODEL.VLTSEG.TEXT_HEAD.TEMPERATURE = 0.07
    # Weight lambda of L_PTM in L_total = L_Mask2Former + lambda * L_PTM (DenseCLIP: 0.4).
    cfg.MODEL.VLTSEG.TEXT_HEAD.LOSS_WEIGHT = 0.4
    # Backbone map that gets the score map (resized to it) concatenated before the pixel
    # decoder, in training and inference. Official: "res4", the stride-16 map (DenseCLIP's ViT
    # config, score_concat_index=2, always concatenates); "" disables it (VLT's option).
    cfg.MODEL.VLTSEG.TEXT_HEAD.CONCAT_TO = "res4"
    # Reduction of L_PTM. False (official, mmseg's CrossEntropyLoss avg_non_ignore=False):
    # mean over all pixels, ignored ones counting zero; True: mean over the labelled pixels.
    cfg.MODEL.VLTSEG.TEXT_HEAD.AVG_NON_IGNORE = False
    # Weight decay of the learnable context vectors and gamma (DenseCLIP's AdamW: 1e-4); the
    # solver takes it from the head (weight_decay_overrides) instead of SOLVER.WEIGHT_DECAY.
    cfg.MODEL.VLTSEG.TEXT_HEAD.WEIGHT_DECAY = 1e-4

    # Rein query linking (vltseg.modeling.query_linking): Rein's per-layer tokens
    # (MODEL.VLT_BACKBONE.FINETUNE "rein") give the decoder's queries, as in official Rein.
    cfg.MODEL.VLTSEG.REIN = CN()
    # Derive the query positional embeddings from the Rein tokens (official Rein:
    # link_token_to_query=True; the Rein configs set it). Needs a backbone with Rein tokens, i.e.
    # FINETUNE "rein" (an error otherwise), and MODEL.VLT_BACKBONE.REIN.NUM_TOKENS ==
    # MODEL.MASK_FORMER.NUM_OBJECT_QUERIES. Off by default: no other mode has tokens to link.
    cfg.MODEL.VLTSEG.REIN.LINK_QUERIES = False
    # With LINK_QUERIES: also derive the initial query features from the linked queries through
    # one more linear map (official Rein: replace_query_feat=True in every config).
    cfg.MODEL.VLTSEG.REIN.LINK_QUERY_FEATURES = True

    # ---------------------------------------------------------------------------------------------
    # Semantic-segmentation mapper (training augmentation)
    # ---------------------------------------------------------------------------------------------
    # Resize every training image to this (width, height) before random scaling; (0, 0) keeps
    # the native size. GTA5 recipe: (1280, 720).
    cfg.INPUT.RESIZE_TRAIN = (0, 0)
    # Random rescaling range, as factors of the resized image.
    cfg.INPUT.SCALE_RANGE_TRAIN = (0.5, 2.0)
    # How training images are resized before the crop:
    #   "scale": fit into RESIZE_TRAIN (when set) times a factor drawn from SCALE_RANGE_TRAIN
    #            (VLTSeg's GTA5 recipe, mmseg's Resize with ratio_range);
    #   "short_edge_choice": official Rein's RandomChoiceResize(ResizeShortestEdge): the short
    #            edge is set to one of INPUT.MIN_SIZE_TRAIN (pixels, drawn uniformly; Rein:
    #            256, 307, ..., 1024) with the long edge capped at INPUT.MAX_SIZE_TRAIN (Rein:
    #            2048) (Detectron2's keys); RESIZE_TRAIN and SCALE_RANGE_TRAIN are not used.
    cfg.INPUT.RESIZE_TRAIN_TYPE = "scale"
    # Photometric distortion (brightness, contrast, saturation, hue; mmseg's PhotoMetricDistortion).
    cfg.INPUT.COLOR_AUG_SSD = True
    # Crop: Detectron2's INPUT.CROP keys (VLTSeg's ENABLED True, TYPE "absolute", SIZE (h, w) are
    # set in configs/Base-VLTSeg.yaml, not here, so VLTDet keeps Detectron2's defaults).
    # Re-draw the crop (up to 10 times) while one class covers more than this fraction of it.
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 0.75
    # Pad training images to this size (-1: no padding).
    cfg.INPUT.SIZE_DIVISIBILITY = -1

    # ---------------------------------------------------------------------------------------------
    # Inference
    # ---------------------------------------------------------------------------------------------
    # Resize test images to this (width, height) before inference; (0, 0) keeps the native size.
    # GTA5 recipe: (1024, 512).
    cfg.INPUT.RESIZE_TEST = (0, 0)
    cfg.TEST.SLIDING_WINDOW = CN()
    # Sliding-window inference instead of one forward pass over the whole image.
    cfg.TEST.SLIDING_WINDOW.ENABLED = False
    # Window (h, w) and stride (h, w) in pixels; overlapping predictions are averaged.
    cfg.TEST.SLIDING_WINDOW.CROP_SIZE = (512, 512)
    cfg.TEST.SLIDING_WINDOW.STRIDE = (426, 426)
    # Windows evaluated in one batch.
    cfg.TEST.SLIDING_WINDOW.BATCH_SIZE = 4
    # Multi-scale + flip test-time augmentation (detectron2's TEST.AUG.ENABLED / FLIP); the scales
    # are factors of the test size.
    cfg.TEST.AUG.SCALES = (0.75, 1.0, 1.25)
