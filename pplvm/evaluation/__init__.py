from .. import _pyro_settings  # noqa: F401  (Pyro's settings, before anything here builds a model)
