"""A token state: what a task knows for certain about a sequence so far, given to the model
beside each token (`ModelConfig.state_size`).

Some facts a model must otherwise learn to infer are plain bookkeeping for the task: which
notes of a piano performance are still sounding is a count of NOTE_ONs and NOTE_OFFs. A task
that declares a `TokenState` computes that vector after every id; the model embeds it
(`wse`, a linear map) and adds it to the token's embedding. The state outlives the context
window: it is computed from the whole sequence, so a note struck before the window starts
is still known to sound.

The state before the first id is all zeros. Training windows get theirs from `sequence`
over the whole stream they are cut from; generation advances it one id at a time with
`advance`. The two must agree exactly (each task tests this).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch


def size_of(state: TokenState | None) -> int:
    """The width of a token state, 0 for none: what `ModelConfig.state_size` must be."""
    return state.size if state is not None else 0


class TokenState(ABC):
    """The state after each id of a sequence, `size` numbers (counts, flags, ...)."""

    size: int

    @abstractmethod
    def sequence(self, ids: np.ndarray, before: np.ndarray | None = None) -> np.ndarray:
        """(T, size) numbers: the state after each of the T ids, vectorised (training
        data; any numeric dtype, the model reads them as floats). `before`: the state after
        the ids that came before these (a row of what this returns), so that a long stream
        is computed piece by piece; None: the sequence starts here."""

    @abstractmethod
    def advance(self, state: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """(B, size) states after one more id per row, from the (B, size) states before
        and the (B,) ids (generation); the input is not changed."""

    def window(self, ids: np.ndarray, start: int) -> np.ndarray:
        """The states after ids[start:], as `sequence(ids)[start:]` (a task may find the
        state at `start` more cheaply than row by row)."""
        return self.sequence(ids)[start:]
