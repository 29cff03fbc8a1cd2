"""The main job: the whole line from documents to a measured, priced, served model."""

from tokenworks.factory.config import STAGES, FactoryConfig
from tokenworks.factory.pipeline import FactoryRun, StageFailed, run_factory

__all__ = ["STAGES", "FactoryConfig", "FactoryRun", "StageFailed", "run_factory"]
