"""From the judge's next-token distribution to the reward (docs/reward-server.md).

Score = sum_k k * p_k / 5 with p the judge's distribution at the first generated position,
renormalised over the six digit tokens "0".."5" (a softmax over their logits, or equivalently
exp(logprob_k) / sum_j exp(logprob_j)). A backend that cannot read all six (e.g. a server's top-k
left one out) refuses the item instead of counting the missing digit as 0:
:func:`answer_probabilities` is the one place where returned logprobs become probabilities, for
any list of answer tokens. The token ids are looked up in the judge's own tokenizer at
start-up; a tokenizer where a digit is not exactly one token cannot be used and fails loudly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from reward_server.prompt_template import PAIRWISE_ANSWERS

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


# vLLM's OpenAI server reports a -inf logprob as -9999.0 (ChatCompletionLogProb clamps with
# max(logprob, -9999.0)); anything at or below it means "no probability".
LOGPROB_FLOOR = -9999.0


class MissingAnswerError(ValueError):
    """The judge's returned logprobs do not cover every answer token (e.g. a top-k left one out)."""


def answer_probabilities(logprob_by_key: Mapping, keys: Sequence, what: str = "answer") -> list[float]:
    """p_k = exp(l_k) / sum_j exp(l_j) over exactly the answers ``keys`` (a softmax over their logits).

    ``logprob_by_key`` maps a token (id or text) to the judge's logprob or logit at the position
    read; any additive constant cancels, so full-vocabulary logprobs, logprobs restricted to the
    answers, and raw logits give the same p. Every key must be present: an answer missing from the
    map (outside a server's top-k) has an unknown logit, and counting it as probability 0 would
    score something other than the softmax, so it is refused (:class:`MissingAnswerError` naming
    the missing answers). A present ``-inf`` (or vLLM's -9999 clamp) is a genuine probability of 0.
    """
    missing = [key for key in keys if logprob_by_key.get(key) is None]
    if missing:
        raise MissingAnswerError(
            f"the judge's logprobs lack the {what} token(s) {missing} (got {len(keys) - len(missing)} of "
            f"{len(keys)}); the score needs the logprob of every {what}"
        )
    values = [float(logprob_by_key[key]) for key in keys]
    finite = [value for value in values if math.isfinite(value) and value > LOGPROB_FLOOR]
    if not finite:
        raise ValueError(f"the judge gave no probability to any {what} {list(keys)}")
    top = max(finite)
    weights = [
        math.exp(value - top) if math.isfinite(value) and value > LOGPROB_FLOOR else 0.0 for value in values
    ]
    total = sum(weights)
    return [weight / total for weight in weights]


def expected_rating(probabilities: Sequence[float]) -> float:
    """sum_k k * p_k / 5 for the six digit probabilities p_0..p_5."""
    if len(probabilities) != len(DIGITS):
        raise ValueError(f"expected {len(DIGITS)} digit probabilities, got {len(probabilities)}")
    return sum(k * p for k, p in enumerate(probabilities)) / MAX_RATING


def expected_score_from_logprobs(logprobs: Sequence[float | None]) -> float:
    """sum_k k * p_k / 5 with p = softmax of the six digit (log-)scores ``logprobs[k]``.

    ``-inf`` entries have p_k = 0; ``None`` (unknown) is refused like a missing digit.
    """
    if len(logprobs) != len(DIGITS):
        raise ValueError(f"expected {len(DIGITS)} digit log-probabilities, got {len(logprobs)}")
    return expected_score_from_token_map(dict(zip(DIGITS, logprobs, strict=True)), DIGITS)


def expected_score_from_token_map(logprob_by_key: Mapping, keys: Sequence) -> float:
    """Expected score from a {token (id or text): logprob} map; ``keys[k]`` is digit k's key.

    Every digit must be in the map (see :func:`answer_probabilities`), else ``MissingAnswerError``.
    """
    return expected_rating(answer_probabilities(logprob_by_key, keys, what="digit"))


# Positions of the pairwise answers ("1", "2") among the digits every backend already reads.
PAIRWISE_ANSWER_INDEX = tuple(DIGITS.index(answer) for answer in PAIRWISE_ANSWERS)


def preference_from_token_map(logprob_by_key: Mapping, digit_keys: Sequence) -> float:
    """p(edit 1 better) = softmax over the logits of the answers "1" and "2" (``digit_keys[1]``,
    ``digit_keys[2]``); both must be present (see :func:`answer_probabilities`)."""
    keys = [digit_keys[index] for index in PAIRWISE_ANSWER_INDEX]
    return answer_probabilities(logprob_by_key, keys, what="pairwise answer")[0]


def item_score_from_token_map(logprob_by_key: Mapping, digit_keys: Sequence, pairwise: bool) -> float:
    """The score of one item: the preference of a pairwise item, the expected rating otherwise."""
    if pairwise:
        return preference_from_token_map(logprob_by_key, digit_keys)
    return expected_score_from_token_map(logprob_by_key, digit_keys)
