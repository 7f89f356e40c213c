"""GRPO with prior sampling: a row's annotated reasoning trace joins its group as one sample.

Everything specific to prior sampling lives here, beside TRL's untouched GRPOTrainer. The trace is
put in place of a completion in `_generate_single_turn` (before decoding, rewards, metrics and
log-probs), so it is rewarded, normalised and trained on exactly like a generated sample (ratio 1,
no off-policy correction), as in the MPCC authors' code.

Groups are consecutive rows of the global generation batch (TRL's RepeatSampler) and may straddle
ranks; every decision (inject or not, which slot) is a function of the global group index, the
training step and the seed, so all ranks agree without communicating. The trace always takes the
group's last slot, and that slot is not generated.

With vLLM, TRL weights each row by exp(old log-prob - sampling log-prob) and its off-policy mask reads
the sampling log-probs too. A trace was not sampled, so its sampling log-probs are NaN, which TRL reads
as "no correction" (ratio exactly 1, zero KL): the trace is weighted as without vLLM, in every
importance-sampling mode. TRL's `sampling/*` metrics are recomputed over generated rows only.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from mpcc.errors import ConfigError
from mpcc.families.layouts import image_slices
from mpcc.rewards import REWARDS, target_answer, trace_completion
from mpcc.training.grpo import MpccGRPOTrainer

logger = logging.getLogger(__name__)


def _concat(value, pieces: list[slice]):
    """The `pieces` of a tensor, array or list, joined in order."""
    if isinstance(value, torch.Tensor):
        return torch.cat([value[p] for p in pieces])
    if isinstance(value, np.ndarray):
        return np.concatenate([value[p] for p in pieces])
    return [x for p in pieces for x in value[p]]


def _select_multimodal_rows(fields: dict, rows: list[int], n_rows: int) -> dict | None:
    """The processor outputs of `rows` only, when each row holds one image; None when they cannot be split."""
    grid = fields.get("image_grid_thw")
    if grid is not None and len(grid) != n_rows:
        return None
    by_row = [slice(i, i + 1) for i in rows]
    out = {}
    for key, value in fields.items():
        if key == "pixel_values" and grid is not None:
            images = image_slices(grid)
            out[key] = _concat(value, [images[i] for i in rows])
        elif len(value) == n_rows:
            out[key] = _concat(value, by_row)
        else:
            return None
    return out


def _nan_reduce(values: torch.Tensor, op) -> torch.Tensor:
    """`op` over the non-NaN entries of `values`; NaN when there are none."""
    values = values[~values.isnan()]
    return op(values) if values.numel() else values.new_tensor(float("nan"))


class PriorSamplingGRPOTrainer(MpccGRPOTrainer):
    """TRL's GRPOTrainer with one annotated trace per group (see the module docstring and MpccGRPOConfig)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.prior_success_reward not in REWARDS:
            raise ConfigError(
                f"prior_success_reward {self.args.prior_success_reward!r} is not one of {sorted(REWARDS)}"
            )
        self._success_reward = REWARDS[self.args.prior_success_reward]
        self._rows: list[dict] | None = None  # the batch's rows, until its first generation turn
        self._trace_slot: list[bool] = []  # per local row of the current generation batch
        self._warned_split = False
        self._warned_long = False
        self._warned_rows = False

    # -- which slots hold a trace ------------------------------------------------------------------
    def _prior_probability(self) -> float:
        a = self.args
        if a.prior_schedule == "linear" and self.state.max_steps:
            return a.prior_prob * max(0.0, 1.0 - self.state.global_step / self.state.max_steps)
        return a.prior_prob

    def _global_offset(self, n_local: int) -> int:
        return self.accelerator.process_index * n_local

    def _candidate_slots(self, rows: list[dict]) -> list[bool]:
        """Rows that are the last slot of a group whose row has a trace and whose draw says inject."""
        group = self.num_generations
        probability = self._prior_probability()
        offset = self._global_offset(len(rows))
        out = []
        for i, row in enumerate(rows):
            index = offset + i
            draw = np.random.default_rng([self.args.seed, self.state.global_step, index // group]).random()
            out.append(index % group == group - 1 and bool(row.get("reasoning")) and draw < probability)
        return out

    # -- TRL hooks ---------------------------------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        self._rows, self._trace_slot = inputs, [False] * len(inputs)
        output = super()._generate_and_score_completions(inputs)
        if not self.model.training:
            return output
        if self.use_vllm and self.vllm_importance_sampling_correction:
            self._restat_sampling(output)
        return self._log_and_restat(output)

    def _generate_single_turn(
        self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False
    ):
        # A batch's first turn places the traces; tool-call follow-up turns only extend generated rows.
        rows, self._rows = self._rows, None
        if not self.model.training or rows is None or not self._rows_match(rows, prompt_ids):
            return super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        candidates = self._candidate_slots(rows)
        if self.args.prior_when == "group_fails":
            completion_ids, logprobs = super()._generate_single_turn(
                prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
            slots = [c and f for c, f in zip(candidates, self._groups_failed(completion_ids, rows))]
        else:
            slots = candidates
            completion_ids, logprobs = self._generate_without(
                slots, prompt_ids, images, multimodal_fields, num_generations, has_tool_images
            )
        self._trace_slot = slots
        for i, is_trace in enumerate(slots):
            if is_trace:
                completion_ids[i] = self._trace_ids(rows[i])
                if logprobs is not None:  # vLLM: not sampled, so no importance-sampling correction
                    logprobs[i] = [float("nan")] * len(completion_ids[i])
        return completion_ids, logprobs

    def _rows_match(self, rows: list[dict], prompt_ids: list) -> bool:
        """Whether generation got one prompt per dataset row, as trace placement needs; warns once if not."""
        if len(rows) != len(prompt_ids) and not self._warned_rows:
            logger.warning(
                "prior sampling is off for this batch: generation got %d prompts for %d dataset rows, so the "
                "trace slots cannot be placed (a TRL version mpcc does not support?)",
                len(prompt_ids),
                len(rows),
            )
            self._warned_rows = True
        return len(rows) == len(prompt_ids)

    def _generate_without(self, skip, prompt_ids, images, fields, num_generations, has_tool_images):
        """Generate only the rows not in `skip` (at least one, so collective ops stay in step) where the
        backend can; otherwise generate every row, and the caller replaces the skipped ones."""
        keep = [i for i, s in enumerate(skip) if not s] or [0]
        if len(keep) == len(prompt_ids):
            return super()._generate_single_turn(prompt_ids, images, fields, num_generations, has_tool_images)
        sub_fields = self._fields_of_rows(fields, keep, len(prompt_ids))
        if sub_fields is None:
            if not self._warned_split:
                logger.warning(
                    "this generation backend cannot generate part of a batch (vLLM server or tensor-parallel "
                    "mode, or processor outputs that do not split by row): trace slots are generated, then "
                    "replaced"
                )
                self._warned_split = True
            return super()._generate_single_turn(prompt_ids, images, fields, num_generations, has_tool_images)
        ids, logprobs = super()._generate_single_turn(
            [prompt_ids[i] for i in keep],
            [images[i] for i in keep] if images is not None else None,
            sub_fields,
            num_generations,
            has_tool_images,
        )
        completion_ids: list = [[] for _ in prompt_ids]
        all_logprobs = None if logprobs is None else [[] for _ in prompt_ids]
        for j, i in enumerate(keep):
            completion_ids[i] = ids[j]
            if all_logprobs is not None:
                all_logprobs[i] = logprobs[j]
        return completion_ids, all_logprobs

    def _fields_of_rows(self, fields: dict, keep: list[int], n_rows: int) -> dict | None:
        """The generation inputs of the `keep` rows; None when the backend must generate the whole batch.

        vLLM server mode samples `num_generations` completions from each group's first prompt, and
        tensor-parallel colocate mode splits outputs by equal per-rank counts: both need every row.
        Colocated vLLM on one device takes any rows and reads only their token ids and images."""
        if not self.use_vllm:
            return _select_multimodal_rows(fields, keep, n_rows)
        if self.vllm_mode == "colocate" and self.args.vllm_tensor_parallel_size == 1:
            return {}
        return None

    def _trace_ids(self, row: dict) -> list[int]:
        """The trace's tokens + EOS, never cut: a truncated trace would teach a wrong, unrewarded answer.
        It answers what the row asks (a letter, yes/no or the name: `target_answer`)."""
        text = trace_completion(row["reasoning"], target_answer(row))
        ids = self._tokenizer.encode(text, add_special_tokens=False) + [self.eos_token_ids[0]]
        if len(ids) > self.max_completion_length and not self._warned_long:
            logger.warning(
                "a reasoning trace has %d tokens, more than max_completion_length=%d; it is kept whole",
                len(ids),
                self.max_completion_length,
            )
            self._warned_long = True
        return ids

    def _groups_failed(self, completion_ids, rows) -> list[bool]:
        """Per local row: no generated sample of its group reached the success threshold (all ranks)."""
        texts = self._tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
        scores = self._success_reward(
            texts,
            solution=[r["solution"] for r in rows],
            **{k: [r.get(k) for r in rows] for k in ("options", "answer", "format")},
        )
        success = torch.tensor(
            [s >= self.args.prior_success_threshold for s in scores],
            dtype=torch.float32,
            device=self.accelerator.device,
        )
        everyone = self.accelerator.gather(success).view(-1, self.num_generations).amax(1)
        offset = self._global_offset(len(rows))
        return [everyone[(offset + i) // self.num_generations].item() == 0 for i in range(len(rows))]

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._rewards_per_func = rewards_per_func
        return rewards_per_func

    def _restat_sampling(self, output: dict) -> None:
        """Replace this step's `sampling/*` metrics with their values over generated rows only.

        TRL counts each trace as a ratio of 1. Per rank, then across ranks, as TRL does; a rank holding
        only traces contributes NaN, which the cross-rank reductions skip."""
        generated = ~torch.tensor(self._trace_slot, dtype=torch.bool, device=self.accelerator.device)
        tokens = output["completion_mask"].bool() & generated.unsqueeze(1)
        if "tool_mask" in output:
            tokens &= output["tool_mask"].bool()
        delta = (output["old_per_token_logps"] - output["sampling_per_token_logps"]).abs()[tokens]
        ratio = output["importance_sampling_ratio"]  # (B, 1) at sequence level, (B, T) at token level
        sequence_level = self.vllm_importance_sampling_mode.startswith("sequence")
        ratio = ratio[generated] if sequence_level else ratio[tokens]
        stats = {
            "sampling/sampling_logp_difference/mean": (delta, torch.mean),
            "sampling/sampling_logp_difference/max": (delta, torch.max),
            "sampling/importance_sampling_ratio/min": (ratio, torch.min),
            "sampling/importance_sampling_ratio/mean": (ratio, torch.mean),
            "sampling/importance_sampling_ratio/max": (ratio, torch.max),
        }
        local = torch.stack([_nan_reduce(values, op) for values, op in stats.values()])
        ranks = self.accelerator.gather(local.unsqueeze(0))
        metrics = self._metrics["train"]
        for (name, (_, op)), values in zip(stats.items(), ranks.T):
            metrics[name][-1] = _nan_reduce(values, op).item()  # TRL appended this step's value last

    def _log_and_restat(self, output: dict) -> dict:
        """Prior metrics, and the advantages recomputed from generated samples only when asked."""
        device = self.accelerator.device
        local = torch.tensor(self._trace_slot, dtype=torch.bool, device=device)
        is_trace = self.accelerator.gather(local)
        weights = self.reward_weights.to(device)
        rewards = (self._rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        group = self.num_generations
        if not self.args.prior_in_group_stats:
            output["advantages"] = self._advantages_without_traces(rewards, is_trace)[
                self.accelerator.process_index * len(local) : (self.accelerator.process_index + 1)
                * len(local)
            ]
        metrics = self._metrics["train"]
        metrics["prior/injected_fraction"].append(is_trace.view(-1, group).any(1).float().mean().item())
        metrics["prior/traces"].append(is_trace.sum().item())
        metrics["prior/groups"].append(is_trace.numel() / group)
        if is_trace.any():
            metrics["prior/trace_reward"].append(rewards[is_trace].mean().item())
            advantages = self.accelerator.gather(output["advantages"])
            metrics["prior/trace_advantage"].append(advantages[is_trace].mean().item())
        if (~is_trace).any():
            metrics["prior/generated_reward"].append(rewards[~is_trace].mean().item())
        return output

    def _advantages_without_traces(self, rewards: torch.Tensor, is_trace: torch.Tensor) -> torch.Tensor:
        """Centre each group on its generated samples' mean (LUFFY's option); scale by the whole group's
        std, which stays finite when every generated sample scores the same."""
        if self.multi_objective_aggregation != "sum_then_normalize" or self.scale_rewards == "batch":
            raise ConfigError(
                "prior_in_group_stats=False needs multi_objective_aggregation='sum_then_normalize' "
                "and scale_rewards 'group' or 'none'"
            )
        grouped = rewards.view(-1, self.num_generations)
        generated = grouped.masked_fill(is_trace.view_as(grouped), float("nan"))
        advantages = grouped - torch.nanmean(generated, dim=1, keepdim=True)
        if self.scale_rewards != "none":
            advantages = advantages / (grouped.std(dim=1, keepdim=True) + 1e-4)
        return advantages.view(-1)
