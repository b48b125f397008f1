"""The parts of the :class:`pplvm.run.Run` facade, one module each; ``Run`` itself (in
:mod:`pplvm.run`) holds a run's state and names which part each of its methods comes from.

- :mod:`.build`: a run from a card or from a run directory's checkpoint, through one path
  (:func:`.build.assemble`: model, pairing check, guide);
- :mod:`.train`: fit and resume through the trainer;
- :mod:`.query`: log-likelihoods, posteriors, draws, samples, evaluation, the arviz export;
- :mod:`.artifacts`: the run directory's files (inference data, plots, summary), summaries,
  the model's graph, samples saved to a file.

Each part is a set of functions whose first argument is the run (``cls`` for the class
methods); a part reaches another only through the run's methods.
"""

from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before any part builds a model)
