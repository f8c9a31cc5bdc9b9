"""The LightningModule: big_vision's classification recipe around a model from :func:`reluvit.create_model`."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from reluvit.errors import ArgumentError, Range, above, at_least, check_choice, check_range
from reluvit.models import create_model

LOSSES = ("sigmoid", "softmax")
BETA = Range(0, 1, high_open=True)  # each of Adam's two betas


def warmup_cosine(step: int, warmup_steps: int, total_steps: int) -> float:
    """big_vision ``create_learning_rate_schedule(decay_type="cosine")``: linear warm-up to 1, then cosine to 0."""
    warmup = min(1.0, step / warmup_steps) if warmup_steps else 1.0
    progress = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
    return warmup * 0.5 * (1.0 + math.cos(math.pi * progress))


def mixup(images: torch.Tensor, targets: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """big_vision ``utils.mixup``: one lambda per batch from Beta(p, p) (torch's seeded RNG), the larger weight on
    the original image, the partner is the batch rolled by one; targets are mixed the same way."""
    lam = float(torch.distributions.Beta(p, p).sample())
    lam = max(lam, 1.0 - lam)
    return lam * images + (1 - lam) * images.roll(1, 0), lam * targets + (1 - lam) * targets.roll(1, 0)


class ViTClassifier(pl.LightningModule):
    """Trains a ViT with sigmoid (or softmax) cross-entropy, AdamW with decoupled weight decay on weight matrices,
    linear warm-up then cosine decay per optimizer step, and logs top-1 validation accuracy (and minival's).

    Args:
        model: keyword arguments of :func:`reluvit.create_model` (refused ones raise ``ArgumentError`` named
            ``model.<argument>``).
        lr, betas, eps: Adam's; weight_decay is AdamW's (multiplied by the scheduled lr: 0.1 at lr 1e-3 equals
            big_vision's decoupled wd 1e-4).
        warmup_steps: optimizer steps of linear warm-up; the cosine runs to 0 at the last step of training.
        loss: ``sigmoid`` (sum over classes, mean over batch; big_vision ``sigmoid_xent``) or ``softmax``.
        mixup: Beta(p, p) parameter; 0 disables mixup.
        max_steps: optimizer steps after which training stops, validated and checkpointed (-1: the epochs end it);
            the cosine then ends there. Counted here rather than by Lightning's ``max_steps``, whose loop state
            resumes an epoch-end checkpoint one epoch short.

    Raises:
        reluvit.errors.ArgumentError: naming the refused argument (``lr``, ``betas``, ``model.attention.alpha``).
    """

    def __init__(self, model: dict, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.1, warmup_steps: int = 10_000, loss: str = "sigmoid",
                 mixup: float = 0.0, max_steps: int = -1) -> None:
        super().__init__()
        check_range("lr", lr, above(0))
        if not isinstance(betas, Sequence) or len(betas) != 2 or not all(b in BETA for b in betas):
            raise ArgumentError("betas", f"{betas!r} is not two values {BETA}")
        check_range("eps", eps, above(0))
        check_range("weight_decay", weight_decay, at_least(0))
        check_range("warmup_steps", warmup_steps, at_least(0, integer=True))
        check_choice("loss", loss, LOSSES)
        check_range("mixup", mixup, at_least(0))
        check_range("max_steps", max_steps, at_least(1, integer=True, also=(-1,)))
        # not sent to the loggers: W&B's config is the run's whole config (reluvit.run.grid.wandb_config)
        self.save_hyperparameters(logger=False)
        try:
            self.model = create_model(**model)
        except ArgumentError as e:
            raise e.within("model") from None
        self.num_classes = model["num_classes"]
        # one per validation loader: val, and minival (held-out training samples) when the data module has it
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.minival_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.diverged = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def loss_fn(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "sigmoid":
            return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(-1).mean()
        return F.cross_entropy(logits, targets)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        targets = F.one_hot(labels, self.num_classes).to(images.dtype)
        if self.hparams.mixup > 0:
            images, targets = mixup(images, targets, self.hparams.mixup)
        loss = self.loss_fn(self(images).float(), targets)
        if not torch.isfinite(loss):
            self.diverged = True
            self.trainer.should_stop = True
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"])
        if alphas := self.learned_alphas():
            self.log_dict(alphas)
        return loss

    def _steps_done(self) -> bool:
        return 0 < self.hparams.max_steps <= self.trainer.global_step

    def on_train_batch_start(self, batch, batch_idx: int) -> int | None:
        if self._steps_done():  # resumed from a checkpoint of the last step: train nothing more
            self.trainer.should_stop = True
            return -1
        return None

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self._steps_done():
            self.trainer.should_stop = True

    def learned_alphas(self) -> dict[str, float]:
        """With ``learn_alpha``: ``attn/alpha_layer{i}`` (mean over heads), ``attn/alpha_layer{i}_head{h}`` when
        per head, and ``attn/alpha_mean`` over layers; empty otherwise."""
        alphas = [blk.attn.learned_alpha().detach().flatten() for blk in self.model.blocks
                  if getattr(blk.attn, "raw_alpha", None) is not None]
        if not alphas:
            return {}
        out = {}
        for i, alpha in enumerate(alphas):
            out[f"attn/alpha_layer{i}"] = float(alpha.mean())
            if alpha.numel() > 1:
                out.update({f"attn/alpha_layer{i}_head{h}": float(a) for h, a in enumerate(alpha)})
        out["attn/alpha_mean"] = float(torch.stack([a.mean() for a in alphas]).mean())
        return out

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Loader 0 (val) logs ``val/acc`` and ``val/loss``, loader 1 (minival) ``val/minival_acc`` and
        ``val/minival_loss``."""
        images, labels = batch
        logits = self(images).float()
        prefix, accuracy = (("val/", self.val_acc), ("val/minival_", self.minival_acc))[dataloader_idx]
        accuracy(logits, labels)
        targets = F.one_hot(labels, self.num_classes).float()
        self.log(f"{prefix}loss", self.loss_fn(logits, targets), sync_dist=True, add_dataloader_idx=False)
        self.log(f"{prefix}acc", accuracy, prog_bar=dataloader_idx == 0, add_dataloader_idx=False)

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            # big_vision decays ".*/kernel$": Dense and Conv kernels, not biases, norms, posemb or class token.
            (decay if p.ndim >= 2 and name.endswith(".weight") else no_decay).append(p)
        hp = self.hparams
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps,
        )
        total = self.trainer.estimated_stepping_batches
        if hp.max_steps > 0:
            total = min(total, hp.max_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, hp.warmup_steps, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
