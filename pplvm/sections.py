"""The card's fixed sections, ``[training]`` and ``[evaluation]``: the schema no registry
supplies (the tagged sections, ``[model]``, ``[data]``, ``[objective]`` and ``[guide]``, come from
their plugins; :mod:`pplvm.config` gathers them all into the card). Foundation layer: the
trainer reads :class:`TrainingConfig` without importing the card schema above it."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from .schema import Section, Seed


class TrainingConfig(Section):
    epochs: int = Field(100, ge=1, description="passes over the training data")
    batch_size: int | None = Field(None, ge=1, description="minibatch size; none = full batch")
    optimizer: Literal["adam", "adamw", "sgd", "rmsprop"] = Field(
        "adam", description="the optimiser of the model's and guide's parameters (torch.optim's of that name)"
    )
    lr: float = Field(0.01, gt=0, description="learning rate (where lr_schedule starts)")
    weight_decay: float = Field(0.0, ge=0, description="the optimiser's weight decay (decoupled for adamw)")
    betas: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        [0.9, 0.999],
        min_length=2,
        max_length=2,
        description="adam / adamw: the moment decay rates [β1, β2], each in [0, 1)",
    )
    eps: float = Field(
        1e-8,
        gt=0,
        description="adam / adamw / rmsprop: ε of the update's denominator, relative "
        "to the gradient of the loss per datum (the IWAE paper's Adam: 1e-4)",
    )
    lr_schedule: Literal["constant", "exponential", "cosine", "iwae"] = Field(
        "constant",
        description="constant | exponential | cosine (to lr * lr_final_ratio over the epochs) | iwae "
        "(Burda et al. 2016: 3^i epochs at lr * 10^(-i/7), i = 0..7, 3280 epochs in all; then the last)",
    )
    lr_final_ratio: float = Field(0.1, gt=0, le=1, description="final lr / lr for decaying schedules")
    lr_warmup_steps: int = Field(
        0,
        ge=0,
        description="linear warm-up: an optimiser's k-th update runs at min(1, k / lr_warmup_steps) times the lr "
        "lr_schedule sets (k = 1, 2, ...: one update per step; a GAN's discriminator counts each of its "
        "critic_steps); 0 = none",
    )
    clip_norm: float | None = Field(None, gt=0, description="clip the gradient norm to this")
    ema: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="decay of an exponential moving average of the model's and guide's parameters, updated "
        "after every step (e.g. 0.9999, as in the diffusion papers); evaluation and sampling use it (pplvm "
        "evaluate / sample --weights raw to compare), held-out metrics log both (valid_loss, valid_loss_ema) and "
        "early stopping follows the EMA's; none = off",
    )
    ema_warmup: bool = Field(
        False,
        description="warm the EMA's decay up: after step t (1, 2, ...) it is min(ema, (1 + t) / (10 + t))",
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        description="stop once this many steps are done in all (counting the steps before a resume), mid-epoch "
        "if need be, with a checkpoint and a held-out evaluation; pplvm resume continues exactly",
    )
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="stop after the first step that ends this many minutes of wall time into this fit or "
        "resume (each invocation has its own budget), mid-epoch if need be, with a checkpoint and a held-out "
        "evaluation (which come after the budget)",
    )
    patience: int | None = Field(None, ge=1, description="early stopping: epochs without improvement")
    min_delta: float = Field(0.0, ge=0, description="early stopping: smallest improvement that counts")
    eval_every: int = Field(1, ge=1, description="held-out evaluation every this many epochs")
    checkpoint_every: int | None = Field(
        None, ge=1, description="checkpoint every this many epochs; none = by time (checkpoint_seconds)"
    )
    checkpoint_seconds: float = Field(
        30.0,
        ge=0,
        description="without checkpoint_every: at most one checkpoint per this many seconds, written at the "
        "step that passes it, also mid-epoch (one process; several: at epoch ends), and after the first and last "
        "epochs always",
    )
    device: str = Field(
        "auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto (a GPU when there is one) | cpu | cuda | cuda:N"
    )
    precision: Literal["fp32", "bf16", "tf32"] = Field(
        "fp32", description="fp32 | bf16 (autocast; log-probabilities and reductions stay fp32) | tf32 (CUDA)"
    )
    compile: Literal["auto", "trace", "inductor", "off"] = Field(
        "auto",
        description="auto (the fastest step for the fit's length: Pyro's plain step for fits under 200 "
        "steps, else the SVI step traced once into a flat graph from the second step, a CUDA graph on CUDA, "
        "inductor on a CPU where its compile time pays back and it proves faster; each choice in one log "
        "line) | trace (from the second step) | inductor (traced, then torch.compile) | off (Pyro's plain "
        "step); a dynamic structure falls back to off with a log line",
    )
    seed: Seed = Field(
        0,
        description="seed of the fit: the initial parameters, the guide's start, the minibatch order and every "
        "draw during training",
    )
    restarts: int = Field(
        1,
        ge=1,
        description="fit from this many starting points (training.seed, seed + 1, ...) and keep the one with the "
        "best final training loss, as scikit-learn's n_init; EM for mixtures and HMMs runs them in one batched "
        "pass, other fits one after another; the kept run is the fit of its seed",
    )
    progress: bool = Field(True, description="a progress bar and log lines on stderr while fitting")
    pyro_validation: Literal["first_step", "every_step"] = Field(
        "first_step", description="Pyro's distribution checks on the first step of a fit, or on every step"
    )


class EvaluationConfig(Section):
    samples: int | None = Field(
        None,
        ge=1,
        description="importance samples per datum of an estimated log-likelihood (a family whose likelihood "
        "is 'estimate': VAE, continuous local latents, a dequantised flow); none = the family's default (100; "
        "a dequantised flow 64); pplvm evaluate --samples overrides it",
    )
    export: bool = Field(
        True,
        description="write inference_data.nc (arviz: posterior draws, log-likelihood per datum and draw, "
        "posterior-predictive replicates) after a fit; false skips it (the summary and plots are still "
        "written): pplvm export RUN writes the same file later",
    )
    draws: int = Field(
        100,
        ge=1,
        description="posterior draws per chain for arviz; a guide whose globals are a point estimate (map, "
        "AutoDelta, objective em) exports one draw of one chain",
    )
    chains: int = Field(4, ge=1, description="independent guide draws are split into this many chains")
    max_rows: int = Field(5000, ge=1, description="rows of data kept in the arviz export (a random subset)")
    memory_mb: float = Field(
        512.0,
        gt=0,
        description="bound on the working memory of every evaluation and "
        "export pass (log-likelihood over draws x data, replicates, local posteriors), in MB; "
        "see pplvm.evaluation.memory",
    )
