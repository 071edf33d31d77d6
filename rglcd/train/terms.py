"""The loss terms of one optimizer step, summed on the device and read back once (docs/method.md 2.9, 3).

    terms = StepTerms(accelerator.device, grad_accum)
    terms.add(out)                                  # per micro-batch: no host sync
    values, grad_norm = terms.reduce(accelerator, norm)   # per step: one all-reduce, one device->host copy

The mean over processes of a non-finite term is non-finite, so `values["loss"]` being finite is the
same test as "finite on every process" without a separate collective.
"""
from __future__ import annotations

import torch

TERMS = ("loss", "lcd_loss", "reward_loss", "reward")


class StepTerms:
    """Running mean over a step's micro-batches of (loss, lcd_loss, reward_loss, reward), a (4,) device tensor."""

    def __init__(self, device: torch.device, micro_batches: int):
        self.sums = torch.zeros(len(TERMS), device=device)
        self.micro_batches = micro_batches

    def add(self, out) -> None:
        """Add one micro-batch's `rglcd.step.StepOutput` (reward 0 without a reward model)."""
        reward = out.reward if out.reward is not None else torch.zeros((), device=self.sums.device)
        row = torch.stack([out.loss.detach(), out.lcd_loss.detach(), out.reward_loss.detach(), reward.detach()])
        self.sums += row.float().to(self.sums.device) / self.micro_batches

    def reduce(self, accelerator, grad_norm: torch.Tensor | float) -> tuple[dict[str, float], float]:
        """Mean of each term over all processes (the global batch's loss) and the grad norm, as floats."""
        means = accelerator.reduce(self.sums, reduction="mean") if accelerator.num_processes > 1 else self.sums
        norm = torch.as_tensor(grad_norm, dtype=torch.float32).reshape(1).to(means.device)
        values = torch.cat([means, norm]).tolist()  # the step's one device -> host copy
        return dict(zip(TERMS, values[:-1])), values[-1]
