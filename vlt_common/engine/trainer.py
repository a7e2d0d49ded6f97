"""VLT's trainer: Detectron2's ``DefaultTrainer`` wired to VLT's solver, mappers and evaluators.

What it adds to Detectron2's trainer:

- every component comes from a VLT registry or builder (optimizer and schedule from
  :mod:`vlt_common.solver`, the mapper from ``INPUT.DATASET_MAPPER_NAME``, the evaluator from the
  dataset's ``evaluator_type``), so one trainer serves VLTSeg and VLTDet;
- the step (:class:`VLTStepTrainer`, Detectron2's ``run_step`` extension point) accumulates
  gradients over SOLVER.ACCUMULATION_STEPS passes and stops on a non-finite loss before the
  backward and the optimizer step, naming the iteration and the term;
- checkpoints are written atomically (:class:`AtomicCheckpointer`), so ``kill -9`` then
  ``--resume`` always finds a complete file;
- DDP also runs on CPU (GLOO), mixed precision uses bf16 where the GPU supports it;
- ``test`` evaluates every dataset of ``DATASETS.TEST`` and writes the domain-generalization report;
  the best checkpoint (mean over target domains) is kept as ``model_best.pth``.
"""
import contextlib
import logging
import math
import os
import time
import weakref
from collections import OrderedDict

import torch
from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from vlt_common.data.checks import check_datasets
from vlt_common.data.corruptions import register_corrupted_datasets
from vlt_common.data.mapper_registry import build_dataset_mapper
from vlt_common.engine.checkpoint import AtomicCheckpointer
from vlt_common.utils.model_stats import parameter_table

__all__ = [
    "VLTAMPStepTrainer",
    "VLTStepTrainer",
    "VLTTrainer",
    "check_losses_finite",
    "micro_batch_size",
]

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
        terms = ", ".join(f"{k}={values[k]}" for k in bad)
        raise FloatingPointError(
            f"Non-finite loss at iteration {iteration}: {terms}"
            f" (all terms: {values}). Training stopped before the optimizer step; lower "
            "SOLVER.BASE_LR, enable SOLVER.CLIP_GRADIENTS or check the data of this iteration."
        )


class VLTStepTrainer(SimpleTrainer):
    """
    Detectron2's :class:`SimpleTrainer` with VLT's ``run_step`` (its public extension point):

    * gradient accumulation: one iteration runs ``accumulation_steps`` forward/backward passes,
      each on the next batch of the data loader with its losses scaled by
      ``1 / accumulation_steps``, then one optimizer step; under DDP the gradients are
      all-reduced only in the last pass (``no_sync``);
    * the loss guard: every pass's loss terms are checked (:func:`check_losses_finite`) right
      after its forward, so a non-finite loss raises before its backward and before the
      optimizer step, whatever Detectron2 does with the metrics (written synchronously or not).

    The logged losses are the mean over the passes. With ``accumulation_steps`` 1 this is
    Detectron2's step.
    """

    def __init__(self, model, data_loader, optimizer, *, accumulation_steps=1, **kwargs):
        """
        Args:
            model, data_loader, optimizer, kwargs: as for :class:`SimpleTrainer`.
            accumulation_steps (int): forward/backward passes per optimizer step (>= 1).
        """
        if accumulation_steps < 1:
            raise ValueError(
                f"SOLVER.ACCUMULATION_STEPS must be >= 1, got {accumulation_steps}"
            )
        super().__init__(model, data_loader, optimizer, **kwargs)
        self.accumulation_steps = accumulation_steps

    def forward_losses(self, data):
        """The model's loss dict for one batch (a tensor result is named "total_loss")."""
        loss_dict = self.model(data)
        return loss_dict if isinstance(loss_dict, dict) else {"total_loss": loss_dict}

    def backward(self, loss):
        loss.backward()

    def optimizer_step(self):
        self.optimizer.step()

    def _sync_context(self, last_pass):
        # Gradients are all-reduced once, in the last pass of the accumulation.
        if not last_pass and isinstance(self.model, DistributedDataParallel):
            return self.model.no_sync()
        return contextlib.nullcontext()

    def run_step(self):
        assert self.model.training, "[VLTStepTrainer] model was changed to eval mode!"
        self.optimizer.zero_grad()
        data_time = 0.0
        logged = {}
        for index in range(self.accumulation_steps):
            start = time.perf_counter()
            data = next(self._data_loader_iter)
            data_time += time.perf_counter() - start
            with self._sync_context(last_pass=index == self.accumulation_steps - 1):
                loss_dict = self.forward_losses(data)
                check_losses_finite(loss_dict, self.iter)
                self.backward(sum(loss_dict.values()) / self.accumulation_steps)
            for name, value in loss_dict.items():
                logged[name] = logged.get(name, 0.0) + value.detach() / self.accumulation_steps
        self.after_backward()
        if (self.iter + 1) % self.gather_metric_period == 0:
            if self.async_write_metrics:
                self.concurrent_executor.submit(self.write_metrics, logged, data_time, self.iter)
            else:
                self.write_metrics(logged, data_time, self.iter)
        self.optimizer_step()


class VLTAMPStepTrainer(VLTStepTrainer, AMPTrainer):
    """:class:`VLTStepTrainer` in mixed precision (Detectron2's :class:`AMPTrainer` parts:
    autocast in ``precision``, the gradient scaler, its state in checkpoints)."""

    def forward_losses(self, data):
        with torch.autocast("cuda", dtype=self.precision):
            return super().forward_losses(data)

    def backward(self, loss):
        self.grad_scaler.scale(loss).backward()

    def optimizer_step(self):
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()


def _build_step_trainer(cfg, model, data_loader, optimizer):
    kwargs = {"accumulation_steps": cfg.SOLVER.ACCUMULATION_STEPS}
    if not cfg.SOLVER.AMP.ENABLED:
        return VLTStepTrainer(model, data_loader, optimizer, **kwargs)
    if not torch.cuda.is_available():
        logger.warning("SOLVER.AMP.ENABLED is ignored: mixed precision needs a CUDA device.")
        return VLTStepTrainer(model, data_loader, optimizer, **kwargs)
    precision = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    logger.info("Mixed precision training in %s", precision)
    return VLTAMPStepTrainer(model, data_loader, optimizer, precision=precision, **kwargs)


def _create_ddp(cfg, model):
    kwargs = {"broadcast_buffers": False}
    if cfg.MODEL.DEVICE == "cpu":
        # DDP over GLOO takes CPU modules without device ids.
        kwargs["device_ids"] = None
    if cfg.MODEL.VLT_BACKBONE.FINETUNE == "frozen_warmup":
        # During the warm-up the trunk's parameters get no gradient.
        kwargs["find_unused_parameters"] = True
    return create_ddp_model(model, **kwargs)


def micro_batch_size(cfg, world_size):
    """
    Images per process in one forward/backward pass: SOLVER.IMS_PER_BATCH (one optimizer step,
    all processes) split over SOLVER.ACCUMULATION_STEPS passes and ``world_size`` processes.

    Raises:
        ValueError: naming the keys, when the batch does not split evenly.
    """
    total, steps = cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.ACCUMULATION_STEPS
    if steps < 1 or total % (steps * world_size):
        raise ValueError(
            f"SOLVER.IMS_PER_BATCH={total} must be a multiple of SOLVER.ACCUMULATION_STEPS={steps}"
            f" (>= 1) times the number of processes ({world_size})"
        )
    return total // (steps * world_size)


class VLTTrainer(DefaultTrainer):
    """
    The trainer of ``train_net.py`` for both tasks. Built from a config like
    :class:`DefaultTrainer`; see the module docstring for what differs.

    Everything but the construction is Detectron2's (hooks, resume, train, test, state).
    ``__init__`` builds the parts with the ``build_*`` class methods in Detectron2's order; it
    cannot call ``DefaultTrainer.__init__``, which hard-codes the three parts VLT replaces: the
    DDP wrapper (GPU device ids, so no CPU/GLOO run, and no ``find_unused_parameters`` for the
    frozen warm-up), the step trainer class (VLT's accumulates and guards the loss) and the
    checkpointer class (VLT's writes atomically).
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        self.check_config(cfg)

        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = _create_ddp(cfg, model)
        self._trainer = _build_step_trainer(cfg, model, data_loader, optimizer)

        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def check_config(cls, cfg):
        """
        Fail fast, before the model is built, on a config that cannot train: the batch must
        split into SOLVER.ACCUMULATION_STEPS passes over the processes, and every dataset of
        DATASETS.TRAIN and DATASETS.TEST must be registered, non-empty and readable
        (:func:`~vlt_common.data.checks.check_datasets`), so that a broken test set stops the run
        before training instead of after it.
        """
        micro_batch_size(cfg, comm.get_world_size())
        check_datasets(cfg)

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
        """Detectron2's training loader of one forward/backward pass: SOLVER.IMS_PER_BATCH /
        SOLVER.ACCUMULATION_STEPS images over all processes."""
        steps = cfg.SOLVER.ACCUMULATION_STEPS
        micro_batch_size(cfg, comm.get_world_size())
        return build_detection_train_loader(
            cfg,
            mapper=build_dataset_mapper(cfg, True),
            total_batch_size=cfg.SOLVER.IMS_PER_BATCH // steps,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = build_dataset_mapper(cfg, False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

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
        results, failed = OrderedDict(), OrderedDict()
        for idx, name in enumerate(datasets):
            # A test set whose files are missing or broken fails here, alike on every rank, and
            # must not lose the others' results. Errors inside inference (one rank's images) are
            # not caught: the other ranks would wait in a collective that never comes.
            try:
                evaluator = evaluators[idx] if evaluators is not None else cls.build_evaluator(
                    cfg, name
                )
                loader = cls.build_test_loader(cfg, name)
            except Exception as e:
                if len(datasets) == 1:
                    raise
                logger.exception("Evaluation of %s failed; continuing with the others", name)
                failed[name] = f"{type(e).__name__}: {e}"
                continue
            results[name] = inference_on_dataset(model, loader, evaluator)
            if comm.is_main_process():
                logger.info("Evaluation results for %s in csv format:", name)
                print_csv_format(results[name])
        if failed and not results:
            raise RuntimeError(f"every test dataset failed to evaluate: {dict(failed)}")
        # Test splits written for a benchmark server (TEST.SUBMISSION.DIR) have no metrics.
        if comm.is_main_process() and sum(bool(r) for r in results.values()) + len(failed) > 1:
            results[DG_RESULTS_KEY] = cls.write_report(cfg, results, failed)
        return results

    @staticmethod
    def write_report(cfg, results, failed=None):
        """
        Write the DG report (table, ``dg_report.json``, ``dg_report.png``) into ``OUTPUT_DIR``,
        naming the test datasets whose evaluation ``failed`` (name -> why) and the mIoU
        convention ``TEST.MIOU_ABSENT_CLASSES``.

        Returns:
            dict[str, float]: the flat summary stored with the other results.
        """
        from vlt_common.evaluation import write_dg_report

        source = cfg.TEST.DG.SOURCE_DATASET or cfg.DATASETS.TEST[0]
        report = write_dg_report(
            results,
            source_dataset=source,
            output_dir=cfg.OUTPUT_DIR,
            failed=failed,
            miou_convention=cfg.TEST.MIOU_ABSENT_CLASSES,
        )
        return report["summary"]
