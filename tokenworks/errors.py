"""The project's own exception types.

Library code raises these with a message that tells the user what to change; the CLI
prints the message and exits non-zero instead of showing a traceback.
"""


class TokenworksError(Exception):
    """Base class of every error tokenworks reports to its user."""


class ConfigError(TokenworksError):
    """A configuration (ours or a Hugging Face config.json) is invalid or unsupported."""


class CheckpointError(TokenworksError):
    """A checkpoint directory is missing, incomplete or does not match the model."""


class TokenizerError(TokenworksError):
    """A tokenizer cannot be trained, loaded or used as asked."""


class TrainError(TokenworksError):
    """A training run cannot start (or continue) as configured."""


class BenchError(TokenworksError):
    """A benchmark cannot run as asked: an unreachable endpoint, a bad workload or SLO specification."""


class PlanError(TokenworksError):
    """A plan cannot be made as asked: an unknown GPU, a missing or corrupt profile, a profile of
    another model."""
