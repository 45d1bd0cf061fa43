"""Faust agents: the pipeline's stages. Autodiscovered by the worker; never imported."""
