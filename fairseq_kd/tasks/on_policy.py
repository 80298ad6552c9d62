"""On-policy batches (Agarwal et al. 2024, GKD): with probability ``--on-policy-fraction`` an update's targets
are the student's own translations of its sources, made under no_grad inside the training step, so that the
divergence to the teacher is taken on the student's prefixes (the criterion leaves out the NLL on them)."""

import argparse
from typing import Any, Dict

import numpy as np
import torch
from fairseq.data import Dictionary, data_utils
from fairseq.sequence_generator import SequenceGenerator

# the length bound of the student's on-policy translations, fairseq's max_len_a * source length + max_len_b, as
# in the evaluation and the pseudo-labelling (fairseq_kd.evaluate.Settings)
ON_POLICY_MAX_LEN = (1.5, 10)


def check_on_policy_settings(fraction: float, decoding: str, temperature: float) -> None:
    if not 0 <= fraction <= 1:
        raise ValueError(
            f"--on-policy-fraction must be in [0, 1] (the share of updates on the student's translations), got {fraction}"
        )
    if decoding == "sample" and not 0 < temperature < float("inf"):
        raise ValueError(f"--on-policy-temperature must be > 0 and finite, got {temperature}")


def draw(fraction: float, seed: int, update_num: int) -> bool:
    """Whether update UPDATE_NUM trains on the student's own translations: a draw with probability FRACTION
    from a generator seeded with (SEED, UPDATE_NUM). Every batch of the update (with --update-freq) and every
    process draws the same, and a run resumed from a checkpoint (which holds the update number) draws what
    the uninterrupted run drew."""
    if fraction <= 0:
        return False
    return fraction >= 1 or np.random.default_rng([seed, update_num]).random() < fraction


def unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside fairseq's data-parallel wrappers (a proxy around DDP around the model)."""
    while hasattr(model, "module"):
        model = model.module
    return model


def generator(task: Any, model: torch.nn.Module, cfg: Any) -> SequenceGenerator:
    """fairseq's SequenceGenerator for the student's translations: beam 1, sampling with
    ``--on-policy-temperature`` or greedy (``--on-policy-decoding``), bounded by ON_POLICY_MAX_LEN."""
    sampling = str(cfg.on_policy_decoding) == "sample"
    settings = argparse.Namespace(
        beam=1, sampling=sampling, temperature=cfg.on_policy_temperature if sampling else 1.0,
        max_len_a=ON_POLICY_MAX_LEN[0], max_len_b=ON_POLICY_MAX_LEN[1],
    )  # fmt: skip
    student = unwrapped(model)
    was_training = student.training
    search = task.build_generator([student], settings)
    student.train(was_training)  # fairseq's SequenceGenerator puts its models in eval mode
    return search


@torch.no_grad()
def student_translations(search: SequenceGenerator, sample: Dict[str, Any], model: torch.nn.Module,
                         tgt_dict: Dictionary) -> Dict[str, Any]:  # fmt: skip
    """SAMPLE with the student's translations of its sources (by SEARCH, the model in eval mode) as target and
    ``sample["on_policy"] = True``. Sampling draws from torch's generator, which fairseq's trainer seeds with
    --seed + the update number before each update."""
    student = unwrapped(model)
    was_training = student.training
    student.eval()
    try:
        hypotheses = search.generate([student], sample)
    finally:
        student.train(was_training)
    tokens = [h[0]["tokens"] for h in hypotheses]  # each ends with </s>
    pad, eos = tgt_dict.pad(), tgt_dict.eos()
    target = data_utils.collate_tokens(tokens, pad, eos, left_pad=False)
    prev_output_tokens = data_utils.collate_tokens(tokens, pad, eos, left_pad=False, move_eos_to_beginning=True)
    net_input = dict(sample["net_input"], prev_output_tokens=prev_output_tokens.to(target.device))
    return dict(sample, net_input=net_input, target=target, ntokens=int(target.ne(pad).sum()), on_policy=True)
