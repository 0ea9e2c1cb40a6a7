"""The input limits infer holds a job to before the model sees it.

ingest refuses a submission over ``MAX_INPUTS`` inputs or ``MAX_INPUT_CHARS`` characters in
one input with a 422, but producers other than ingest can reach infer's queue, so infer
checks again (the same settings fields, :class:`shared.config.InferSettings`): a job over a
limit ends ``failed`` with an error naming it, and is neither tokenised nor run.

Tokens are not a third limit: a handler truncates each input to its model's maximum sequence
length (256 tokens for all-minilm-l6-v2), as sentence-transformers does, so an input's vector
stands for its first tokens, and the character limit bounds the tokenising.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["over_limits"]


def over_limits(inputs: Sequence[str], *, max_inputs: int, max_input_chars: int) -> str | None:
    """None when ``inputs`` are within the limits, else which limit they break (one line)."""
    if len(inputs) > max_inputs:
        return f"the job has {len(inputs)} inputs, more than the limit of {max_inputs} (MAX_INPUTS)"
    for index, text in enumerate(inputs):
        if len(text) > max_input_chars:
            return (
                f"inputs[{index}] has {len(text)} characters, more than the limit of "
                f"{max_input_chars} (MAX_INPUT_CHARS)"
            )
    return None
