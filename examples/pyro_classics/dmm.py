"""The Deep Markov Model (Krishnan, Shalit & Sontag 2017, "Structured Inference Networks for
Nonlinear State Space Models"), as Pyro's ``examples/dmm.py`` writes it: one module with the
model, its guide and the networks they use::

    p(z_t | z_{t-1}) = N(GatedTransition(z_{t-1}))          z_0 a learned vector
    p(x_t | z_t)     = Bernoulli(Emitter(z_t))               x_t: the keys down at step t
    q(z_t | z_{t-1}, x_{t:T}) = N(Combiner(z_{t-1}, h_t))    h_t: an RNN run backwards over x

pplvm passes a batch of padded sequences as Pyro's DMM takes it: ``x`` ``(B, T, D)``, and by
keyword ``mask`` ``(B, T)`` and ``lengths`` ``(B,)``. Every step ``t`` is masked beyond each
sequence's length (``.mask(mask[:, t - 1 : t])``), so padded steps add nothing.

What differs from Pyro's file: no ``pyro.module("dmm", self)`` (pplvm optimises the module's
parameters itself); the RNN reads the sequences reversed and padded instead of packed; no
normalizing flows in the guide (``num_iafs``); KL annealing is ``objective.kl_warmup_epochs``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class Emitter(nn.Module):
    """Parameterizes the bernoulli observation likelihood ``p(x_t | z_t)``."""

    def __init__(self, input_dim: int, z_dim: int, emission_dim: int):
        super().__init__()
        self.lin_z_to_hidden = nn.Linear(z_dim, emission_dim)
        self.lin_hidden_to_hidden = nn.Linear(emission_dim, emission_dim)
        self.lin_hidden_to_input = nn.Linear(emission_dim, input_dim)
        self.relu = nn.ReLU()

    def forward(self, z_t):
        h1 = self.relu(self.lin_z_to_hidden(z_t))
        h2 = self.relu(self.lin_hidden_to_hidden(h1))
        return torch.sigmoid(self.lin_hidden_to_input(h2))


class GatedTransition(nn.Module):
    """Parameterizes the gaussian latent transition probability ``p(z_t | z_{t-1})``."""

    def __init__(self, z_dim: int, transition_dim: int):
        super().__init__()
        self.lin_gate_z_to_hidden = nn.Linear(z_dim, transition_dim)
        self.lin_gate_hidden_to_z = nn.Linear(transition_dim, z_dim)
        self.lin_proposed_mean_z_to_hidden = nn.Linear(z_dim, transition_dim)
        self.lin_proposed_mean_hidden_to_z = nn.Linear(transition_dim, z_dim)
        self.lin_sig = nn.Linear(z_dim, z_dim)
        self.lin_z_to_loc = nn.Linear(z_dim, z_dim)
        self.lin_z_to_loc.weight.data = torch.eye(z_dim)  # starts as the identity function
        self.lin_z_to_loc.bias.data = torch.zeros(z_dim)
        self.relu = nn.ReLU()
        self.softplus = nn.Softplus()

    def forward(self, z_t_1):
        _gate = self.relu(self.lin_gate_z_to_hidden(z_t_1))
        gate = torch.sigmoid(self.lin_gate_hidden_to_z(_gate))
        _proposed_mean = self.relu(self.lin_proposed_mean_z_to_hidden(z_t_1))
        proposed_mean = self.lin_proposed_mean_hidden_to_z(_proposed_mean)
        loc = (1 - gate) * self.lin_z_to_loc(z_t_1) + gate * proposed_mean
        scale = self.softplus(self.lin_sig(self.relu(proposed_mean)))
        return loc, scale


class Combiner(nn.Module):
    """Parameterizes ``q(z_t | z_{t-1}, x_{t:T})``, the building block of the guide; ``x_{t:T}``
    enters through the hidden state of the backward RNN."""

    def __init__(self, z_dim: int, rnn_dim: int):
        super().__init__()
        self.lin_z_to_hidden = nn.Linear(z_dim, rnn_dim)
        self.lin_hidden_to_loc = nn.Linear(rnn_dim, z_dim)
        self.lin_hidden_to_scale = nn.Linear(rnn_dim, z_dim)
        self.tanh = nn.Tanh()
        self.softplus = nn.Softplus()

    def forward(self, z_t_1, h_rnn):
        h_combined = 0.5 * (self.tanh(self.lin_z_to_hidden(z_t_1)) + h_rnn)
        loc = self.lin_hidden_to_loc(h_combined)
        scale = self.softplus(self.lin_hidden_to_scale(h_combined))
        return loc, scale


def reverse_sequences(x, lengths):
    """Each sequence's first ``lengths[b]`` steps in reverse order, its padding left in place
    (Pyro's ``polyphonic_data_loader.reverse_sequences``, without the loop)."""
    steps = torch.arange(x.size(1), device=x.device)
    last = lengths.unsqueeze(-1) - 1
    index = torch.where(steps <= last, last - steps, steps)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class DMM(nn.Module):
    """The model (``forward``) and the guide (``guide``) of the Deep Markov Model."""

    def __init__(self, input_dim=88, z_dim=100, emission_dim=100, transition_dim=200, rnn_dim=600):
        super().__init__()
        self.emitter = Emitter(input_dim, z_dim, emission_dim)
        self.trans = GatedTransition(z_dim, transition_dim)
        self.combiner = Combiner(z_dim, rnn_dim)
        self.rnn = nn.RNN(input_size=input_dim, hidden_size=rnn_dim, nonlinearity="relu", batch_first=True)
        # learned z_0 and z_q_0 define p(z_1) and q(z_1); h_0 is the RNN's initial state
        self.z_0 = nn.Parameter(torch.zeros(z_dim))
        self.z_q_0 = nn.Parameter(torch.zeros(z_dim))
        self.h_0 = nn.Parameter(torch.zeros(1, 1, rnn_dim))

    def forward(self, x, mask, lengths, annealing_factor=1.0):
        """The model ``p(x_{1:T} | z_{1:T}) p(z_{1:T})``."""
        T_max = x.size(1)
        z_prev = self.z_0.expand(x.size(0), self.z_0.size(0))
        with pyro.plate("z_minibatch", len(x)):
            for t in pyro.markov(range(1, T_max + 1)):
                z_loc, z_scale = self.trans(z_prev)
                with pyro.poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample("z_%d" % t, dist.Normal(z_loc, z_scale).mask(mask[:, t - 1 : t]).to_event(1))
                emission_probs_t = self.emitter(z_t)
                pyro.sample(
                    "obs_x_%d" % t,
                    dist.Bernoulli(emission_probs_t).mask(mask[:, t - 1 : t]).to_event(1),
                    obs=x[:, t - 1, :],
                )
                z_prev = z_t

    def guide(self, x, mask, lengths, annealing_factor=1.0):
        """The guide ``q(z_{1:T} | x_{1:T})``."""
        T_max = x.size(1)
        h_0_contig = self.h_0.expand(1, x.size(0), self.rnn.hidden_size).contiguous()
        rnn_output, _ = self.rnn(reverse_sequences(x, lengths), h_0_contig)
        rnn_output = reverse_sequences(rnn_output, lengths)  # h_t summarises x_{t:T}
        z_prev = self.z_q_0.expand(x.size(0), self.z_q_0.size(0))
        with pyro.plate("z_minibatch", len(x)):
            for t in pyro.markov(range(1, T_max + 1)):
                z_loc, z_scale = self.combiner(z_prev, rnn_output[:, t - 1, :])
                with pyro.poutine.scale(scale=annealing_factor):
                    z_t = pyro.sample("z_%d" % t, dist.Normal(z_loc, z_scale).mask(mask[:, t - 1 : t]).to_event(1))
                z_prev = z_t
