"""The default job's task gives the model's own samples a learning signal (issue 34): at step 1, at the job's
sampling temperature, between 15% and 60% of the embedded model's answers are right, in either precision."""

from __future__ import annotations

import numpy as np
import pytest

from remix_rft.config import load_config
from remix_rft.informative import group_informative
from remix_rft.trainer import Trainer


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_default_job_step_one_success_rate_is_between_15_and_60_percent(tmp_path, dtype):
    config = load_config("quickstart", [f"model.dtype={dtype}", f"logging.output_dir={tmp_path}",
                                        "logging.tensorboard=false", "logging.progress=false"])
    trainer = Trainer(config)
    try:
        plan = trainer.begin_step(1)
        # step 1's sampling (seed, temperature, prompt order), over 32 prompts x 4 samples rather than the job's 6 x 4:
        # the rate's standard error is then about 4 points, so a bound that holds is not a coin toss
        fresh = trainer.generate(1, plan, prompts=32)
    finally:
        trainer.close()
    success = float(np.mean([score.correct for score in fresh.scores]))
    informative = np.mean(group_informative([s.reward for s in fresh.scores], config.train.samples_per_prompt))
    assert config.rollout.temperature == 0.7 and len(fresh.scores) == 128
    assert 0.15 <= success <= 0.60, f"step-1 success {success:.3f} (informative groups {informative:.2f})"
    assert informative >= 0.3  # most of the default job's GRPO groups can move the policy
