"""Errors a user can act on. The CLI prints their message as one line and exits non-zero."""

__all__ = [
    "CircuitlabError",
    "ConfigError",
    "ModelNotFoundError",
    "UnsupportedArchitectureError",
    "HubUnreachableError",
    "IntegrityError",
    "ChatTemplateError",
    "PromptError",
]


class CircuitlabError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(CircuitlabError):
    """A bad configuration value or file."""


class ModelNotFoundError(CircuitlabError):
    """A model source that names no preset, path or reachable hub repository."""


class UnsupportedArchitectureError(CircuitlabError):
    """A model whose architecture the hook engine cannot wrap."""


class HubUnreachableError(CircuitlabError):
    """A hub id that could not be fetched (no network, or no such repository)."""


class IntegrityError(CircuitlabError):
    """A file whose content hash does not match what was expected."""


class ChatTemplateError(CircuitlabError):
    """Chat formatting was asked for a model with no template."""


class PromptError(CircuitlabError):
    """A prompt set that is empty, malformed or too small for what was asked."""
