"""A variational autoencoder as a scikit-learn estimator (:mod:`pplvm.families.vae`)."""

from __future__ import annotations

from ._base import PplvmEstimator


class VAE(PplvmEstimator):
    """Variational autoencoder with MLP encoder and decoder (``model.family = "vae"``), trained by
    the ELBO with its KL in closed form. ``score`` is an importance-sampling estimate of the
    log-likelihood (``likelihood_ = "estimate"``) with the encoder as proposal; ``transform``
    gives the encoder's posterior means ``E_q[z | x]``; it has no discrete latents.

    Args:
        n_components: latent dimension L (``model.latent_dim``).
        hidden: hidden widths of both networks (``model.hidden``).
        likelihood: ``"gaussian"`` (real data) or ``"bernoulli"`` (values in [0, 1]) (``model.likelihood``).
        activation: ``"tanh"``, ``"relu"``, ... (``model.activation``).
        max_epochs: ``training.epochs``; lr: ``training.lr``; batch_size: ``training.batch_size``
            (None: full batch).
        importance_samples: draws per row of ``score``'s estimate (``evaluation.samples``).
        random_state, verbose, run_dir: as every estimator here."""

    _card_base = {
        "model": {"family": "vae", "architecture": "mlp"},
        "guide": {"kind": "amortized"},
        "objective": {"name": "meanfield"},
    }
    _card_keys = {
        "n_components": "model.latent_dim",
        "hidden": "model.hidden",
        "likelihood": "model.likelihood",
        "activation": "model.activation",
        "max_epochs": "training.epochs",
        "lr": "training.lr",
        "batch_size": "training.batch_size",
        "importance_samples": "evaluation.samples",
    }

    def __init__(
        self,
        n_components=2,
        *,
        hidden=(64,),
        likelihood="gaussian",
        activation="tanh",
        max_epochs=100,
        lr=1e-3,
        batch_size=None,
        importance_samples=100,
        random_state=None,
        verbose=0,
        run_dir=None,
    ):
        self.n_components = n_components
        self.hidden = hidden
        self.likelihood = likelihood
        self.activation = activation
        self.max_epochs = max_epochs
        self.lr = lr
        self.batch_size = batch_size
        self.importance_samples = importance_samples
        self.random_state = random_state
        self.verbose = verbose
        self.run_dir = run_dir
