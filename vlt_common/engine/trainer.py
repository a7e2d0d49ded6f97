"""VLT's trainer: Detectron2's ``DefaultTrainer`` wired to VLT's solver, mappers and evaluators.

What it adds to Detectron2's trainer:

- every component comes from a VLT registry or builder (optimizer and schedule from
  :mod:`vlt_common.solver`, the mapper from ``INPUT.DATASET_MAPPER_NAME``, the evaluator from the
  dataset's ``evaluator_type``), so one trainer serves VLTSeg and VLTDet;
- a non-finite loss stops training before the optimizer step, naming the iteration and the term;
- checkpoints are written atomically (:class:`AtomicCheckpointer`), so ``kill -9`` then
  ``--resume`` always finds a complete file;
- DDP also runs on CPU (GLOO), mixed precision uses bf16 where the GPU supports it;
- ``test`` evaluates every dataset of ``DATASETS.TEST`` and writes the domain-generalization report;
  the best checkpoint (mean over target domains) is kept as ``model_best.pth``.
"""
import logging
import math
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from vlt_common.data.corruptions import register_corrupted_datasets
from vlt_common.data.mapper_registry import build_dataset_mapper
from vlt_common.engine.checkpoint import AtomicCheckpointer
from vlt_common.utils.model_stats import parameter_table

__all__ = ["VLTTrainer", "check_losses_finite"]

logger = logging.getLogger(__name__)

# Key of the report summary in the results returned by ``VLTTrainer.test`` (and so in the event
# storage, as "dg/<metric>"): the model selection metric is the mean over the target domains.
DG_RESULTS_KEY = "dg"
BEST_METRIC = f"{DG_RESULTS_KEY}/mean_target"


def check_losses_finite(loss_dict, iteration):
    """
    Raise if any loss term is NaN or infinite.

    Args:
        loss_dict (dict[str, Tensor]): the model's losses.
        iteration (int): current iteration, for the message.

    Raises:
        FloatingPointError: naming the iteration, the offending terms and all values.
    """
    values = {k: float(v.detach()) for k, v in loss_dict.items()}
    bad = sorted(k for k, v in values.items() if not math.isfinite(v))
    if bad:
        raise FloatingPointError(
            f"Non-finite loss at iteration {iteration}: {', '.join(f'{k}={values[k]}' for k in bad)}"
            f" (all terms: {values}). Training stopped before the optimizer step; lower "
            "SOLVER.BASE_LR, enable SOLVER.CLIP_GRADIENTS or check the data of this iteration."
        )


class _LossGuard:
    """Checks every loss term of every process before Detectron2 logs them (after backward,
    before the optimizer step, so the weights are never updated with a non-finite gradient)."""

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        check_losses_finite(loss_dict, self.iter if iter is None else iter)
        super()._write_metrics(loss_dict, data_time, prefix=prefix, iter=iter)


class GuardedSimpleTrainer(_LossGuard, SimpleTrainer):
    """:class:`SimpleTrainer` with the non-finite-loss guard."""


class GuardedAMPTrainer(_LossGuard, AMPTrainer):
    """:class:`AMPTrainer` with the non-finite-loss guard."""


def _build_step_runner(cfg, model, data_loader, optimizer):
    if not cfg.SOLVER.AMP.ENABLED:
        return GuardedSimpleTrainer(model, data_loader, optimizer)
    if not torch.cuda.is_available():
        logger.warning("SOLVER.AMP.ENABLED is ignored: mixed precision needs a CUDA device.")
        return GuardedSimpleTrainer(model, data_loader, optimizer)
    precision = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    logger.info("Mixed precision training in %s", precision)
    return GuardedAMPTrainer(model, data_loader, optimizer, precision=precision)


def _create_ddp(cfg, model):
    kwargs = {"broadcast_buffers": False}
    if cfg.MODEL.DEVICE == "cpu":
        # DDP over GLOO takes CPU modules without device ids.
        kwargs["device_ids"] = None
    if cfg.MODEL.VLT_BACKBONE.FINETUNE == "frozen_warmup":
        # During the warm-up the trunk's parameters get no gradient.
        kwargs["find_unused_parameters"] = True
    return create_ddp_model(model, **kwargs)


class VLTTrainer(DefaultTrainer):
    """
    The trainer of ``train_net.py`` for both tasks. Built from a config like
    :class:`DefaultTrainer`; see the module docstring for what differs.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = _create_ddp(cfg, model)
        self._trainer = _build_step_runner(cfg, model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        model = super().build_model(cfg)
        logger.info("Parameters (trainable / total):\n%s", parameter_table(model))
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        from vlt_common.solver import build_optimizer

        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        from vlt_common.solver import build_lr_scheduler

        return build_lr_scheduler(cfg, optimizer)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=build_dataset_mapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_detection_test_loader(cfg, dataset_name, mapper=build_dataset_mapper(cfg, False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        from vlt_common.evaluation import build_evaluator

        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self):
        ret = super().build_hooks()
        cfg = self.cfg
        if cfg.MODEL.VLT_BACKBONE.FINETUNE == "frozen_warmup" and cfg.SOLVER.FROZEN_BACKBONE_ITERS:
            from vlt_common.engine.hooks import FrozenBackboneWarmup

            ret.insert(0, FrozenBackboneWarmup(cfg.SOLVER.FROZEN_BACKBONE_ITERS))
        if comm.is_main_process() and cfg.TEST.EVAL_PERIOD > 0 and len(cfg.DATASETS.TEST) > 1:
            # After the evaluation hook, so that it reads this evaluation's metric.
            position = next(i for i, h in enumerate(ret) if isinstance(h, hooks.EvalHook)) + 1
            best = hooks.BestCheckpointer(
                cfg.TEST.EVAL_PERIOD, self.checkpointer, BEST_METRIC, mode="max"
            )
            ret.insert(position, best)
        return ret

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """
        Evaluate ``model`` on every dataset of ``DATASETS.TEST`` and write the DG report.

        Args:
            cfg (CfgNode):
            model (nn.Module):
            evaluators (list[DatasetEvaluator] or None): one per test dataset; None builds them
                with :meth:`build_evaluator`.

        Returns:
            OrderedDict: dataset name -> that dataset's results, plus ``"dg"`` -> the report
            summary (mean over target domains, and so on) when there is more than one dataset.
        """
        datasets = list(cfg.DATASETS.TEST)
        register_corrupted_datasets(datasets)
        if evaluators is not None and len(evaluators) != len(datasets):
            raise ValueError(
                f"{len(evaluators)} evaluators given for {len(datasets)} datasets in DATASETS.TEST"
            )
        results = OrderedDict()
        for idx, name in enumerate(datasets):
            evaluator = evaluators[idx] if evaluators is not None else cls.build_evaluator(cfg, name)
            results[name] = inference_on_dataset(model, cls.build_test_loader(cfg, name), evaluator)
            if comm.is_main_process():
                logger.info("Evaluation results for %s in csv format:", name)
                print_csv_format(results[name])
        # Test splits written for a benchmark server (TEST.SUBMISSION.DIR) have no metrics.
        if comm.is_main_process() and sum(bool(r) for r in results.values()) > 1:
            results[DG_RESULTS_KEY] = cls.write_report(cfg, results)
        return results

    @staticmethod
    def write_report(cfg, results):
        """
        Write the DG report (table, ``dg_report.json``, ``dg_report.png``) into ``OUTPUT_DIR``.

        Returns:
            dict[str, float]: the flat summary stored with the other results.
        """
        from vlt_common.evaluation import write_dg_report

        source = cfg.TEST.DG.SOURCE_DATASET or cfg.DATASETS.TEST[0]
        report = write_dg_report(results, source_dataset=source, output_dir=cfg.OUTPUT_DIR)
        return report["summary"]
