"""From the judge's next-token distribution to the reward (SPEC section 3).

Score = sum_k k * p_k / 5 with p the judge's distribution at the first generated position,
renormalised over the six digit tokens "0".."5" (a softmax over their logits, or equivalently
exp(logprob_k) / sum_j exp(logprob_j)). The token ids are looked up in the judge's own tokenizer at
start-up; a tokenizer where a digit is not exactly one token cannot be used and fails loudly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

DIGITS = ("0", "1", "2", "3", "4", "5")
MAX_RATING = 5


def digit_token_ids(tokenizer) -> list[int]:
    """Token ids of "0".."5" in ``tokenizer`` (anything with ``encode(text, add_special_tokens=False)``)."""
    ids = []
    for digit in DIGITS:
        encoded = list(tokenizer.encode(digit, add_special_tokens=False))
        if len(encoded) != 1:
            raise ValueError(
                f"the judge's tokenizer encodes the digit {digit!r} as {encoded}, not as one token; "
                "the expected score needs one token per rating"
            )
        ids.append(int(encoded[0]))
    if len(set(ids)) != len(ids):
        raise ValueError(f"the judge's tokenizer maps distinct digits to the same token ids {ids}")
    return ids


def expected_score_from_logprobs(logprobs: Sequence[float | None]) -> float:
    """sum_k k * p_k / 5 with p_k = exp(l_k) / sum_j exp(l_j); ``None``/-inf entries have p_k = 0.

    ``logprobs[k]`` is the (log-)score of digit k; any additive constant cancels, so raw logits,
    full-vocabulary logprobs and logprobs restricted to the digits all give the same value.
    """
    if len(logprobs) != len(DIGITS):
        raise ValueError(f"expected {len(DIGITS)} digit log-probabilities, got {len(logprobs)}")
    finite = [(k, value) for k, value in enumerate(logprobs) if value is not None and math.isfinite(value)]
    if not finite:
        raise ValueError("the judge gave no probability to any digit 0-5")
    top = max(value for _, value in finite)
    weights = [(k, math.exp(value - top)) for k, value in finite]
    total = sum(weight for _, weight in weights)
    return sum(k * weight for k, weight in weights) / total / MAX_RATING


def expected_score_from_token_map(logprob_by_key: Mapping, keys: Sequence) -> float:
    """Expected score from a {token (id or text): logprob} map of the judge's top tokens.

    ``keys[k]`` is the key of digit k in the map; digits absent from the map were outside the
    returned top tokens and get probability 0 after renormalisation.
    """
    return expected_score_from_logprobs([logprob_by_key.get(key) for key in keys])
