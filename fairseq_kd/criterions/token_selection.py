"""Selective distillation (Wang et al., 2021, "Selective Knowledge Distillation for Neural Machine
Translation", https://arxiv.org/abs/2105.12967): word-level KD on the target tokens that the student finds
hardest, by its own cross-entropy, chosen per batch or against a queue of recent tokens."""

import math

import torch


def select_top_tokens(token_nll: torch.Tensor, ignore_mask: torch.Tensor, ratio: float) -> torch.Tensor:
    """Batch-level selection of Wang et al., 2021 (https://arxiv.org/abs/2105.12967): the ceil(ratio * n)
    non-padding positions with the highest student cross-entropy *token_nll*. Returns a BoolTensor
    mask of the selected positions."""
    scores = token_nll.detach().float().masked_fill(ignore_mask, float("-inf"))
    num_tokens = int((~ignore_mask).sum())
    k = min(num_tokens, math.ceil(ratio * num_tokens))
    selected = torch.zeros_like(ignore_mask)
    if k > 0:
        selected[scores.topk(k).indices] = True
    return selected


class SelectionQueue:
    """Global-level selection of Wang et al., 2021: a FIFO of the cross-entropies of the most recent
    tokens; a token is selected when its cross-entropy reaches the queue's (1 - ratio) quantile."""

    def __init__(self, size: int):
        self.size = size
        self.values = torch.empty(0)

    def push(self, values: torch.Tensor) -> None:
        self.values = torch.cat([self.values, values.detach().float().cpu()])[-self.size :]

    def select(self, token_nll: torch.Tensor, ignore_mask: torch.Tensor, ratio: float) -> torch.Tensor:
        self.push(token_nll[~ignore_mask])
        threshold = torch.quantile(self.values, 1.0 - ratio) if len(self.values) else float("inf")
        return (token_nll.detach().float() >= threshold.to(token_nll.device)) & ~ignore_mask
