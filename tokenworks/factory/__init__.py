"""The main job: the whole line from documents to tokens, on the embedded defaults."""

from tokenworks.factory.pipeline import FactoryOptions, FactoryResult, run_factory

__all__ = ["FactoryOptions", "FactoryResult", "run_factory"]
