"""Small cards, one or more per family, for the contract suite (tests/test_contract.py).

Every family joins the suite by adding its cases here; the suite has no per-family code.
Each case is a complete card dict small enough to fit in a second or two.
"""

from __future__ import annotations

import pytest

FAST_TRAINING = {"epochs": 3, "lr": 0.05, "progress": False}
SMALL_EVAL = {"draws": 5, "chains": 2, "max_rows": 200}

CASES = [
    pytest.param(
        {
            "name": "gmm_diag",
            "model": {"family": "gmm", "components": 3, "covariance": "diag"},
            "guide": {"kind": "meanfield"},
            "objective": {"name": "enum", "num_particles": 3},
            "data": {"source": "synthetic_gmm", "n": 120, "dim": 2, "components": 3},
            "training": FAST_TRAINING,
            "evaluation": SMALL_EVAL,
        },
        id="gmm-diag-meanfield",
    ),
    pytest.param(
        {
            "name": "gmm_full",
            "model": {"family": "gmm", "components": 2, "covariance": "full"},
            "guide": {"kind": "map"},
            "objective": {"name": "enum"},
            "data": {"source": "iris", "standardize": True},
            "training": {**FAST_TRAINING, "batch_size": 40},
            "evaluation": SMALL_EVAL,
        },
        id="gmm-full-map-minibatch",
    ),
    pytest.param(
        {
            "name": "vae_digits",
            "model": {"family": "vae", "latent_dim": 4, "hidden": [32, 32]},
            "guide": {"kind": "amortized"},
            "objective": {"name": "elbo"},
            "data": {"source": "digits", "binarize": "dynamic"},
            "training": {**FAST_TRAINING, "lr": 0.01, "batch_size": 256},
            "evaluation": SMALL_EVAL,
        },
        id="vae-digits-dynamic-mlp",
    ),
    pytest.param(
        {
            "name": "cvae_digits",
            "model": {
                "family": "cvae",
                "classes": 10,
                "latent_dim": 4,
                "hidden": [32],
                "architecture": "conv",
                "channels": 4,
                "activation": "relu",
            },
            "guide": {"kind": "amortized"},
            "objective": {"name": "iwae", "num_particles": 4},
            "data": {"source": "digits", "binarize": "static", "valid_fraction": 0.1, "test_fraction": 0.1},
            "training": {**FAST_TRAINING, "lr": 0.01, "batch_size": 256},
            "evaluation": SMALL_EVAL,
        },
        id="cvae-digits-conv",
    ),
    pytest.param(
        {
            "name": "hmm_gauss",
            "model": {"family": "hmm", "states": 2, "sample_length": 8},
            "guide": {"kind": "meanfield"},
            "objective": {"name": "enum"},
            "data": {"source": "synthetic_hmm", "n": 12, "min_length": 5, "max_length": 12, "states": 2, "dim": 2},
            "training": {**FAST_TRAINING, "batch_size": 4},
            "evaluation": SMALL_EVAL,
        },
        id="hmm-gaussian-meanfield-minibatch",
    ),
    pytest.param(
        {
            "name": "hmm_symbols",
            "model": {"family": "hmm", "states": 2, "emission": "categorical", "categories": 3, "sample_length": 8},
            "guide": {"kind": "map"},
            "objective": {"name": "enum"},
            "data": {
                "source": "synthetic_hmm",
                "n": 10,
                "min_length": 4,
                "max_length": 9,
                "states": 2,
                "dim": 1,
                "emission": "categorical",
                "categories": 3,
            },
            "training": FAST_TRAINING,
            "evaluation": SMALL_EVAL,
        },
        id="hmm-categorical-map",
    ),
    pytest.param(
        {
            "name": "ppca_ml",
            "model": {"family": "ppca", "latent_dim": 2},
            "guide": {"kind": "exact"},
            "objective": {"name": "elbo"},
            "data": {"source": "wine", "standardize": True},
            "training": FAST_TRAINING,
            "evaluation": SMALL_EVAL,
        },
        id="ppca-ml-exact",
    ),
    pytest.param(
        {
            "name": "fa_bayes",
            "model": {"family": "fa", "latent_dim": 1, "prior": "normal", "encoder": "mlp", "hidden": 8},
            "guide": {"kind": "amortized"},
            "objective": {"name": "elbo"},
            "data": {"source": "iris", "standardize": True},
            "training": {**FAST_TRAINING, "batch_size": 40},
            "evaluation": SMALL_EVAL,
        },
        id="fa-bayes-amortized-minibatch",
    ),
    pytest.param(
        {
            "name": "ppca_meanfield",
            "model": {"family": "ppca", "latent_dim": 2, "prior": "normal"},
            "guide": {"kind": "meanfield"},
            "objective": {"name": "meanfield"},
            "data": {"source": "wine", "standardize": True},
            "training": {**FAST_TRAINING, "batch_size": 50},
            "evaluation": SMALL_EVAL,
        },
        id="ppca-bayes-meanfield-local-minibatch",
    ),
    pytest.param(
        {
            "name": "diffusion_moons",
            "model": {"family": "diffusion", "steps": 6, "schedule": "cosine", "hidden": [16, 16], "embed_dim": 8},
            "guide": {"kind": "forward"},
            "objective": {"name": "diffusion", "num_particles": 2},
            "data": {"source": "moons", "n": 200, "standardize": True},
            "training": {**FAST_TRAINING, "lr": 0.01, "batch_size": 64},
            "evaluation": SMALL_EVAL,
        },
        id="diffusion-moons-mlp-minibatch",
    ),
    pytest.param(
        {
            "name": "diffusion_digits",
            "model": {
                "family": "diffusion",
                "steps": 4,
                "schedule": "cosine",
                "decoder": "discretized",
                "levels": 17,
                "variance": "posterior",
                "denoiser": "unet",
                "channels": 4,
                "channel_mult": [1, 2],
                "embed_dim": 8,
            },
            "guide": {"kind": "forward"},
            "objective": {"name": "vdm"},
            "data": {"source": "digits", "valid_fraction": 0.1, "test_fraction": 0.1},
            "training": {**FAST_TRAINING, "epochs": 1, "lr": 0.01, "batch_size": 512},
            "evaluation": {"draws": 2, "chains": 2, "max_rows": 40},
        },
        id="diffusion-digits-unet-discretized-vdm",
    ),
    pytest.param(
        {
            "name": "flow_iris",
            "model": {
                "family": "flow",
                "transforms": ["affine_coupling", "permute", "actnorm", "maf"],
                "repeat": 1,
                "hidden": [8],
            },
            "guide": {"kind": "none"},
            "objective": {"name": "elbo"},
            "data": {"source": "iris", "standardize": True},
            "training": {**FAST_TRAINING, "batch_size": 40},
            "evaluation": SMALL_EVAL,
        },
        id="flow-iris-coupling-maf-minibatch",
    ),
    pytest.param(
        {
            "name": "flow_digits",
            "model": {
                "family": "flow",
                "transforms": ["spline_coupling", "permute", "batchnorm"],
                "repeat": 1,
                "hidden": [16],
                "dequantize": "variational",
                "levels": 17,
                "dequantizer_transforms": 1,
            },
            "guide": {"kind": "none"},
            "objective": {"name": "elbo"},
            "data": {"source": "digits"},
            "training": {**FAST_TRAINING, "lr": 0.01, "batch_size": 256},
            "evaluation": {**SMALL_EVAL, "samples": 4},
        },
        id="flow-digits-variational-dequantisation",
    ),
    pytest.param(
        {
            "name": "gan_digits",
            "model": {
                "family": "gan",
                "latent_dim": 4,
                "hidden": [32],
                "discriminator_hidden": [32],
                "mmd_samples": 64,
            },
            "guide": {"kind": "none"},
            "objective": {"name": "gan"},
            "data": {"source": "digits"},
            "training": {**FAST_TRAINING, "lr": 0.001, "batch_size": 256},
            "evaluation": SMALL_EVAL,
        },
        id="gan-digits-nonsaturating",
    ),
    pytest.param(
        {
            "name": "wgan_wine",
            "model": {
                "family": "gan",
                "latent_dim": 2,
                "hidden": [16],
                "likelihood": "gaussian",
                "discriminator_hidden": [16],
                "critic_steps": 2,
            },
            "guide": {"kind": "none"},
            "objective": {"name": "wgan_gp"},
            "data": {"source": "wine", "standardize": True},
            "training": {**FAST_TRAINING, "lr": 0.001, "batch_size": 64},
            "evaluation": SMALL_EVAL,
        },
        id="wgan-gp-wine-minibatch",
    ),
    pytest.param(
        {
            "name": "gmm_em",
            "model": {"family": "gmm", "components": 3, "covariance": "diag"},
            "guide": {"kind": "map"},
            "objective": {"name": "em"},
            "data": {"source": "synthetic_gmm", "n": 120, "dim": 2, "components": 3},
            "training": {**FAST_TRAINING, "batch_size": 40},
            "evaluation": SMALL_EVAL,
        },
        id="gmm-diag-em-stepwise",
    ),
    pytest.param(
        {
            "name": "fa_em",
            "model": {"family": "fa", "latent_dim": 1, "prior": "normal"},
            "guide": {"kind": "map"},
            "objective": {"name": "em"},
            "data": {"source": "iris", "standardize": True},
            "training": FAST_TRAINING,
            "evaluation": SMALL_EVAL,
        },
        id="fa-bayes-em-map",
    ),
    # users' own Pyro models (tests/user_models.py), by import path: the same contract, no special case
    pytest.param(
        {
            "name": "user_gmm",
            "model": {"family": "pyro", "target": "user_models:gmm"},
            "guide": {"kind": "meanfield"},
            "objective": {"name": "enum"},
            "data": {"source": "synthetic_gmm", "n": 120, "dim": 2, "components": 3},
            "training": {**FAST_TRAINING, "batch_size": 40},
            "evaluation": SMALL_EVAL,
        },
        id="user-gmm-enumerated-meanfield-minibatch",
    ),
    pytest.param(
        {
            "name": "user_ppca",
            "model": {
                "family": "pyro",
                "target": "user_models:BayesianPPCA",
                "options": {"dim": 13, "latent_dim": 2},
            },
            "guide": {"kind": "amortized"},
            "objective": {"name": "elbo"},
            "data": {"source": "wine", "standardize": True},
            "training": {**FAST_TRAINING, "batch_size": 50},
            "evaluation": {**SMALL_EVAL, "samples": 20},
        },
        id="user-ppca-class-amortized-minibatch",
    ),
    pytest.param(
        {
            "name": "user_normal",
            "model": {
                "family": "pyro",
                "target": "user_models:normal_mean",
                "guide_target": "user_models:NormalMeanGuide",
                "guide_options": {"dim": 4},
            },
            "guide": {"kind": "custom"},
            "objective": {"name": "elbo"},
            "data": {"source": "iris", "standardize": True},
            "training": FAST_TRAINING,
            "evaluation": SMALL_EVAL,
        },
        id="user-normal-custom-guide",
    ),
    pytest.param(
        {
            "name": "user_mfa",
            "model": {
                "family": "pyro",
                "target": "user_models:MixtureOfFactorAnalysers",
                "options": {"dim": 4, "components": 2},
            },
            "guide": {"kind": "amortized"},
            "objective": {"name": "enum"},
            "data": {"source": "iris", "standardize": True},
            "training": {**FAST_TRAINING, "batch_size": 50},
            "evaluation": {**SMALL_EVAL, "samples": 16},
        },
        id="user-mfa-discrete-and-continuous-locals",
    ),
    # a user's networks by import path (tests/user_networks.py): a Bayesian decoder (latent
    # weights, global sites of the vae family) and an encoder of the user's own
    pytest.param(
        {
            "name": "user_bayes_decoder",
            "model": {
                "family": "vae",
                "latent_dim": 2,
                "likelihood": "gaussian",
                "decoder_target": "user_networks:BayesLinearDecoder",
                "encoder_target": "user_networks:MLPEncoder",
            },
            "guide": {"kind": "amortized"},
            "objective": {"name": "elbo"},
            "data": {"source": "digits", "binarize": "static"},
            "training": {**FAST_TRAINING, "lr": 0.01, "batch_size": 256},
            "evaluation": {**SMALL_EVAL, "samples": 20},
        },
        id="vae-user-bayes-decoder-and-encoder-minibatch",
    ),
    # a model declared as a graph of nodes (the GMM's twin, tests/families/test_graph.py)
    pytest.param(
        {
            "name": "graph_gmm",
            "model": {
                "family": "graph",
                "nodes": [
                    {"name": "weights", "kind": "global", "prior": "dirichlet", "shape": ["assignment"]},
                    {
                        "name": "locs",
                        "kind": "global",
                        "scale": 10.0,
                        "shape": ["assignment", "D"],
                        "plate": "components",
                    },
                    {
                        "name": "scales",
                        "kind": "global",
                        "prior": "lognormal",
                        "scale": 2.0,
                        "shape": ["assignment", "D"],
                        "plate": "components",
                    },
                    {"name": "assignment", "kind": "categorical", "size": 3, "probs": "weights"},
                    {"name": "obs", "kind": "observed", "mean": "locs", "std": "scales", "given": "assignment"},
                ],
            },
            "guide": {"kind": "lowrank"},
            "objective": {"name": "enum"},
            "data": {"source": "synthetic_gmm", "n": 120, "dim": 2, "components": 3},
            "training": {**FAST_TRAINING, "batch_size": 40},
            "evaluation": SMALL_EVAL,
        },
        id="graph-gmm-lowrank-minibatch",
    ),
    # a side node: the CVAE's twin, the digits' labels fed to decoder and encoder (test_graph.py)
    pytest.param(
        {
            "name": "graph_cvae",
            "model": {
                "family": "graph",
                "hidden": [32],
                "nodes": [
                    {"name": "label", "kind": "side", "classes": 10},
                    {"name": "z", "kind": "gaussian", "dim": 4},
                    {
                        "name": "obs",
                        "kind": "observed",
                        "distribution": "bernoulli",
                        "decoder": True,
                        "input": "z",
                        "side": "label",
                        "hidden": [32],
                    },
                ],
            },
            "guide": {"kind": "amortized"},
            "objective": {"name": "elbo"},
            "data": {"source": "digits", "binarize": "static"},
            "training": {**FAST_TRAINING, "lr": 0.01, "batch_size": 256},
            "evaluation": {**SMALL_EVAL, "samples": 20},
        },
        id="graph-cvae-labels-amortized-minibatch",
    ),
    # a chain node over time: an HMM with Gaussian-mixture emissions, from nodes (test_graph.py)
    pytest.param(
        {
            "name": "graph_hmm_gmm",
            "model": {
                "family": "graph",
                "nodes": [
                    {"name": "initial", "kind": "global", "prior": "dirichlet", "shape": ["state"]},
                    {
                        "name": "transition",
                        "kind": "global",
                        "prior": "dirichlet",
                        "shape": ["state", "state"],
                        "plate": "per_state",
                    },
                    {
                        "name": "weights",
                        "kind": "global",
                        "prior": "dirichlet",
                        "shape": ["state", "component"],
                        "plate": "per_state",
                    },
                    {
                        "name": "locs",
                        "kind": "global",
                        "scale": 5.0,
                        "shape": ["state", "component", "D"],
                        "plate": "per_state",
                    },
                    {
                        "name": "scales",
                        "kind": "global",
                        "prior": "lognormal",
                        "shape": ["state", "component", "D"],
                        "plate": "per_state",
                    },
                    {
                        "name": "state",
                        "kind": "chain",
                        "size": 2,
                        "initial": "initial",
                        "transition": "transition",
                        "length": 8,
                    },
                    {"name": "component", "kind": "categorical", "size": 2, "probs": "weights"},
                    {
                        "name": "obs",
                        "kind": "observed",
                        "mean": "locs",
                        "std": "scales",
                        "given": "state",
                        "mixture": "component",
                    },
                ],
            },
            "guide": {"kind": "meanfield"},
            "objective": {"name": "enum"},
            "data": {"source": "synthetic_hmm", "n": 12, "min_length": 5, "max_length": 12, "states": 2, "dim": 2},
            "training": {**FAST_TRAINING, "batch_size": 4},
            "evaluation": SMALL_EVAL,
        },
        id="graph-hmm-gmm-emissions-meanfield-minibatch",
    ),
]


def plugin_cards() -> list[dict]:
    """Shipped cards with one field swapped to a plugin that is not pplvm's own: Pyro's
    TraceGraph_ELBO on the VAE, Pyro's AutoIAFNormal over the Bayesian PPCA's globals, and a
    user's objective and guide by import path (tests/user_plugins.py) on a mixture. Trained on
    two processes by tests/training/test_distributed.py (torchrun, the replicas kept equal)."""
    from pathlib import Path

    import pplvm

    models = Path(__file__).resolve().parents[1] / "models"
    short = ["training.progress=false", "training.compile=off"]
    swaps = {
        "vae_tracegraph": ("vae_digits", ["objective.name=TraceGraph_ELBO", "objective.kl_warmup_epochs=0"]),
        "ppca_autoiaf": ("ppca_bayes_wine", ["guide.kind=amortized", "guide.globals=AutoIAFNormal"]),
        "gmm_user_plugins": (
            "gmm_synthetic",
            ["objective={target = 'user_plugins:EnumELBO'}", "guide={target = 'user_plugins:DiagonalGlobals'}"],
        ),
    }
    out = []
    for name, (card, overrides) in swaps.items():
        raw = pplvm.card_to_dict(pplvm.load_card(models / f"{card}.toml", [*short, *overrides]))
        out.append({**raw, "name": name})
    return out
