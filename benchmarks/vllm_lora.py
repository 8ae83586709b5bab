"""How a LoRA policy should reach the vLLM engine: merged weights pushed in place, or vLLM's own LoRA path.

Two engines on the embedded model, one after the other (each measured alone):
  merged:  the engine holds the plain model; each weight sync pushes base + B·A·alpha/r (remix-rft's path,
           `VLLMRolloutEngine.update_weights`), then generation runs the plain kernels.
  request: the engine starts with `enable_lora=True`; each sync writes the adapter folder (a few MB) and the
           generation passes a new `LoRARequest` (vLLM loads the adapter and runs its LoRA kernels).
Per sync+generate cycle of the default job's shape (prompts x samples, max_new_tokens), median of --cycles.
Run it in the vLLM venv (scripts/setup_vllm.sh):

    .venv-vllm/bin/python benchmarks/vllm_lora.py --cycles 3

Prints a table; nothing is asserted (README, LoRA).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def perturb(model: torch.nn.Module, seed: int) -> None:
    from remix_rft import lora

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in lora.adapter_parameters(model):
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args()

    import vllm
    from vllm.lora.request import LoRARequest

    from remix_rft import lora
    from remix_rft.data import format_prompt
    from remix_rft.hardware import cpu_model_name
    from remix_rft.models import DEFAULT_MODEL, load_model, load_tokenizer, resolve_model_path
    from remix_rft.rollout import SamplingParams, build_engine

    tokenizer = load_tokenizer(DEFAULT_MODEL)
    prompts = [format_prompt(tokenizer, f"What is {a} + {a + 7}?") for a in range(args.prompts)]
    policy = lora.inject(load_model(DEFAULT_MODEL, dtype="float32"), args.rank, 32.0, 0.0, "all-linear")
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)
    results: dict[str, dict[str, float]] = {}

    engine = build_engine("vllm", policy, tokenizer, seed=0, max_model_len=1024)
    syncs, generations = [], []
    for cycle in range(args.cycles):
        perturb(policy, cycle)
        start = time.perf_counter()
        engine.update_weights(policy)
        middle = time.perf_counter()
        engine.generate(prompts, args.samples, sampling)
        syncs.append(middle - start)
        generations.append(time.perf_counter() - middle)
    engine.close()
    results["merged"] = {"sync": statistics.median(syncs), "generate": statistics.median(generations)}

    base = resolve_model_path(DEFAULT_MODEL)  # the embedded model's converted Hugging Face folder
    llm = vllm.LLM(model=base, tokenizer=base, dtype="float32", seed=0, max_model_len=1024, enforce_eager=True,
                   enable_lora=True, max_lora_rank=args.rank, max_loras=1, kv_cache_memory_bytes=2**30)
    params = vllm.SamplingParams(max_tokens=args.max_new_tokens, temperature=1.0, seed=0, logprobs=0)
    requests = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]}
                for p in prompts for _ in range(args.samples)]
    syncs, generations = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for cycle in range(args.cycles):
            perturb(policy, cycle)
            start = time.perf_counter()
            folder = Path(tmp) / f"adapter_{cycle}"
            lora.save_adapter(policy, folder, base_model=base)
            middle = time.perf_counter()
            llm.generate(requests, params, use_tqdm=False,
                         lora_request=LoRARequest(f"policy-{cycle}", cycle + 1, str(folder)))
            syncs.append(middle - start)
            generations.append(time.perf_counter() - middle)
    results["request"] = {"sync": statistics.median(syncs), "generate": statistics.median(generations)}

    print(f"vLLM {vllm.__version__}, CPU {cpu_model_name()} ({os.cpu_count()} cores); {args.prompts} prompts x "
          f"{args.samples} samples, {args.max_new_tokens} new tokens, LoRA r={args.rank} on all linear layers; "
          f"median of {args.cycles} cycles")
    print("\n| path | sync s | generate s (incl. adapter load) | cycle s |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['sync']:.2f} | {r['generate']:.2f} | {r['sync'] + r['generate']:.2f} |")


if __name__ == "__main__":
    main()
