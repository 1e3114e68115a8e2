"""Reasoning ("thinking") models: find where their answers start, and skip the reasoning.

A reasoning model opens a block (``<think>``, or gpt-oss's harmony ``analysis`` channel)
before it answers. Within a search's few dozen generated tokens the block rarely closes, so
every answer would be judged unfinished and the first-token KL would compare ``<think>``
with ``<think>``. The fix, as Heretic does it: look for a prefix common to the base model's
answers and, when it opens a reasoning block, prefill that block *closed* at the start of
every assistant turn (``HookedModel.response_prefix``), so the model answers at once. A
template that opens the block itself (DeepSeek-R1's generation prompt ends in ``<think>``)
is recognised from the formatted prompt.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence

from circuitlab.engine import HookedModel

__all__ = [
    "closed_block",
    "common_prefix",
    "detect_response_prefix",
    "open_block_in_prompt",
    "prefill_if_reasoning",
]

log = logging.getLogger(__name__)

TAGS = ("think", "thinking", "reasoning")
HARMONY_CLOSED = (
    "<|channel|>analysis<|message|><|end|><|start|>assistant<|channel|>final<|message|>"
)
_OPEN = re.compile(r"<(think|thinking|reasoning)>", re.IGNORECASE)
_HARMONY = re.compile(r"\s*(<\|start\|>assistant)?(<\|channel\|>|analysis(?=[A-Z]|$))")


def common_prefix(responses: Sequence[str]) -> str:
    """The text every response starts with (leading whitespace ignored)."""
    stripped = [r.lstrip() for r in responses]
    return os.path.commonprefix(stripped) if stripped else ""


def closed_block(prefix: str) -> str | None:
    """The closed reasoning block to prefill when ``prefix`` opens one, else None."""
    text = prefix.lstrip()
    match = _OPEN.match(text)
    if match is not None:
        tag = match.group(1)
        return f"<{tag}>\n\n</{tag}>\n\n"
    if _HARMONY.match(text) is not None:
        return HARMONY_CLOSED
    return None


def open_block_in_prompt(model: HookedModel) -> str | None:
    """The opening tag when the formatted prompt itself ends inside a reasoning block
    (the template opened it and nothing closed it), else None."""
    if not model.tokenizer.chat_template:
        return None
    text = model.format_chat(["?"])[0]
    opened = list(_OPEN.finditer(text))
    if not opened:
        return None
    last = opened[-1]
    close = f"</{last.group(1)}>"
    return None if close.lower() in text[last.end() :].lower() else last.group(0)


def detect_response_prefix(model: HookedModel, responses: Sequence[str]) -> str:
    """What to prefill so the model answers without reasoning first ("" when nothing).

    Args:
        responses: the base model's answers to a few prompts, generated without a prefill.
    """
    opener = open_block_in_prompt(model)
    if opener is not None:
        return f"\n\n</{opener.strip('<>')}>\n\n"
    return closed_block(common_prefix(responses)) or ""


def prefill_if_reasoning(model: HookedModel, first_tokens: Sequence[int]) -> str:
    """The closed block to prefill when the model's likeliest first tokens open reasoning
    (for checks that read one next token, like the capability check), else ""."""
    opener = open_block_in_prompt(model)
    if opener is not None:
        return f"\n\n</{opener.strip('<>')}>\n\n"
    texts = [model.tokenizer.decode([t], skip_special_tokens=False) for t in first_tokens]
    opening = [closed_block(t) for t in texts]
    found = [block for block in opening if block is not None]
    if len(found) * 2 > len(texts):  # most prompts start by reasoning
        return max(set(found), key=found.count)
    return ""
