"""The throughput metrics' denominators: the peak FLOP/s (the best measurement a machine has seen) and the work a
step did (pi_k's pass counted only over the rows it ran on)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import torch

from remix_rft import perf
from remix_rft.batching import collate
from remix_rft.schedule import StepPlan


def test_the_peak_is_the_best_measurement_so_far(monkeypatch, tmp_path):
    monkeypatch.setenv("REMIX_CACHE_DIR", str(tmp_path))
    device = torch.device("cpu")
    readings = iter([1e11, 3e11, 2e11])  # a loaded first measurement, a quiet one, a loaded one
    monkeypatch.setattr(perf, "measure_matmul_flops", lambda device, dtype: next(readings))
    seen = []
    for _ in range(3):  # three processes, one after the other
        monkeypatch.setattr(perf, "_MEASURED", {})
        seen.append(perf.peak_flops_per_s(device, bf16=False))
        assert perf.peak_flops_per_s(device, bf16=False) == seen[-1]  # once per process
    assert seen == [1e11, 3e11, 3e11]
    assert list(json.loads((tmp_path / "peak_flops.json").read_text()).values()) == [3e11]
    assert perf.peak_flops_per_s(device, bf16=False, configured_tflops=0.5) == 5e11


def test_step_work_counts_pi_ks_pass_on_the_rows_it_ran_on():
    tokens = collate([[1, 2], [3, 4], [5, 6], [7, 8]], [[9] * 4, [9] * 4, [9] * 2, [9] * 2], 0)
    batch = SimpleNamespace(tokens=tokens, is_replay=torch.tensor([False, False, True, True]),
                            versions=torch.tensor([3, 3, 2, 2]))
    plan = StepPlan(step=3, phase="mix", offpolicy_fraction=0.5, updates_per_batch=2, kl_convex_weight=1.0,
                    reincarnate=False, fresh_prompts=1, replay_prompts=1)
    references = SimpleNamespace(reference=object(), lagged=None)
    policy = torch.nn.Linear(2, 2)
    full = perf.step_work(policy, None, references, batch, [], plan)
    reused = perf.step_work(policy, None, references, batch, [], plan, sampler_pi_k=True)
    assert full.batch_tokens == 20 and full.logprob_passes == 2  # pi_k and the base reference
    assert reused.logprob_passes == 1 + 8 / 20  # the reference, and pi_k over the replayed rows' 8 tokens


def test_flops_count_the_tokens_the_forwards_ran():
    """A shared prompt forward runs a group's prompt once: the FLOPs (and MFU) count the tokens the decoder ran
    (batching.DECODER_TOKENS over each phase), not every row's prompt again."""
    from remix_rft.batching import DECODER_TOKENS, token_logprobs
    from remix_rft.models import build_tiny_model

    # two rows of one 4-token prompt, responses of 3 and 2 tokens; the decoder's inputs are the batch's columns
    # but its last, so the shorter row feeds all its 6 tokens (its last one's output goes unused)
    tokens = collate([[5, 6, 7, 8], [5, 6, 7, 8]], [[9, 10, 11], [12, 13]], 0)
    model = build_tiny_model(seed=0).eval()
    ran = {}
    for share in (False, True):
        before = DECODER_TOKENS.snapshot()
        with torch.no_grad():
            token_logprobs(model, tokens, share_prompts=share)
        ran[share] = DECODER_TOKENS.since(before)[0]
    assert ran[False] == (4 + 3 - 1) + (4 + 2)  # 12: every row's prompt
    assert ran[True] == 3 + (1 + 2) + (1 + 2)  # 9: the prefix once, then each row's last prompt token and response
    work = perf.StepWork(parameters=10, critic_parameters=0, generated_tokens=5, prompt_tokens=8, batch_tokens=13,
                         logprob_passes=2, update_passes=2, logprob_decoder_tokens=16, update_decoder_tokens=16)
    assert work.flops() == {"generation": 2 * 10 * 13, "logprobs": 2 * 10 * 16, "update": 6 * 10 * 16}
    nominal = perf.StepWork(parameters=10, critic_parameters=0, generated_tokens=5, prompt_tokens=8, batch_tokens=13,
                            logprob_passes=2, update_passes=2)
    assert nominal.flops()["update"] == 6 * 10 * 13 * 2
