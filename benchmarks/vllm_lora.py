"""How a LoRA policy should reach the vLLM engine: merged weights pushed in place, or vLLM's own LoRA path.

Two engines on the embedded model, one after the other (each measured alone):
  merged:  the engine holds the plain model; each weight sync pushes base + B·A·alpha/r (remix-rft's path,
           `VLLMRolloutEngine.update_weights`), then generation runs the plain kernels.
  request: the engine starts with `enable_lora=True`; each sync writes the adapter folder (a few MB) and the
           generation passes a new `LoRARequest` (vLLM loads the adapter and runs its LoRA kernels).
Per sync+generate cycle of the default job's shape (prompts x samples, max_new_tokens), median of --cycles.
Run it in the vLLM venv (scripts/setup_vllm.sh):

    .venv-vllm/bin/python benchmarks/vllm_lora.py --cycles 3

--probe-gap: not the time but what the engine samples. The adapters are scaled to a given |B·A·alpha/r| / |W|
(--ratios), the merged weights pushed to a float32 and to a bf16 engine, and the engine's log-probs (the sync check's
probe, teacher-forced, and the behaviour log-probs of sampled responses at temperature 1) compared with the
trainer's at the same precision (float32, or bf16 autocast over float32 masters as `model.dtype=bfloat16` runs):
  lora:     the trainer's LoRA policy (base and adapters apart), as the loss sees it;
  control:  a plain model holding the same merged float32 weights, as a full finetune would. The engine gets
            bit-identical tensors either way, so control is the kernel noise and lora - control the part that
            rounding W + B·A to the engine's dtype adds;
  request:  vLLM's own LoRA path (enable_lora + a LoRARequest of the adapter folder) against the LoRA policy.
Plus, without the engine: the trainer's LoRA policy against the control (the rounding alone, at the trainer's
kernels) and against the base (the update's own size), and the share of adapted weights whose bf16 value the merge
leaves as the base's. Keep it small on a busy CPU:

    .venv-vllm/bin/python benchmarks/vllm_lora.py --probe-gap --prompts 4 --samples 2 --max-new-tokens 32

Prints tables; nothing is asserted (README, LoRA).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
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


def _adapted_layers(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(base weight, B·A·alpha/r) of every adapted layer, float32."""
    from remix_rft import lora

    scaling = lora.lora_scaling(model)
    layers = []
    for module in model.modules():
        if lora._is_lora_layer(module):
            a, b = module.lora_A[lora.ADAPTER].weight, module.lora_B[lora.ADAPTER].weight
            delta = (b.detach().float() @ a.detach().float()) * scaling
            layers.append((module.base_layer.weight.detach().float(), delta))
    return layers


def update_ratio(model: torch.nn.Module) -> float:
    """|B·A·alpha/r| / |W| over all adapted layers together (Frobenius norms)."""
    layers = _adapted_layers(model)
    return (sum(float(d.square().sum()) for _, d in layers) / sum(float(w.square().sum()) for w, _ in layers)) ** 0.5


def bf16_unchanged_share(model: torch.nn.Module) -> float:
    """The share of adapted-layer weights whose merged value W + B·A·alpha/r rounds to the base's bf16 value."""
    same = total = 0
    for weight, delta in _adapted_layers(model):
        same += int(((weight + delta).bfloat16() == weight.bfloat16()).sum())
        total += weight.numel()
    return same / total


def set_update_ratio(model: torch.nn.Module, snapshot: dict[str, torch.Tensor], ratio: float) -> None:
    """`snapshot`'s adapters with every B scaled so that `update_ratio(model) == ratio` (B·A is linear in B)."""
    from remix_rft import lora

    lora.load_adapter_snapshot(model, snapshot)
    factor = ratio / update_ratio(model)
    with torch.no_grad():
        for name, parameter in lora.adapter_parameters(model):
            if ".lora_B." in name:
                parameter.mul_(factor)


def _relative(path: str) -> str:
    """`path` relative to the working directory when it lies below it (.venv-vllm/bin/python)."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _gap(engine: list[torch.Tensor], trainer: list[torch.Tensor]) -> tuple[float, float]:
    """max and mean |engine - trainer| over all tokens of all sequences."""
    delta = torch.cat([(e.float() - t.float()).abs() for e, t in zip(engine, trainer)])
    return float(delta.max()), float(delta.mean())


def probe_gap(args: argparse.Namespace) -> None:
    """The --probe-gap tables (module docstring)."""
    import vllm
    from vllm.lora.request import LoRARequest

    from remix_rft import lora
    from remix_rft.batching import collate, token_logprobs
    from remix_rft.data import format_prompt
    from remix_rft.hardware import cpu_model_name
    from remix_rft.models import (
        DEFAULT_MODEL,
        autocast_context,
        load_model,
        load_tokenizer,
        resolve_model_path,
    )
    from remix_rft.rollout import SamplingParams, build_engine
    from remix_rft.rollout.sync_check import PROBE_PROMPT, PROBE_RESPONSE
    from remix_rft.rollout.vllm import CPU_KV_CACHE_BYTES

    tokenizer = load_tokenizer(DEFAULT_MODEL)
    base_path = resolve_model_path(DEFAULT_MODEL)
    probe = (tokenizer(PROBE_PROMPT, add_special_tokens=False)["input_ids"],
             tokenizer(PROBE_RESPONSE, add_special_tokens=False)["input_ids"])
    prompts = [format_prompt(tokenizer, f"What is {a} + {a + 7}?") for a in range(args.prompts)]
    sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)
    torch.manual_seed(args.seed)  # PEFT draws A's start values from the global generator
    policy = lora.inject(load_model(DEFAULT_MODEL, dtype="float32"), args.rank, 32.0, 0.0, "all-linear")
    perturb(policy, args.seed)
    start_adapters = lora.adapter_snapshot(policy)
    control = load_model(DEFAULT_MODEL, dtype="float32")  # a plain model: the merged weights of each ratio go in

    @torch.no_grad()
    def scores(model: torch.nn.Module, sequences: list[tuple[list[int], list[int]]],
               bf16: bool) -> list[torch.Tensor]:
        """The trainer's log-probs (temperature 1) of each response, one sequence at a time (no padding)."""
        out = []
        for prompt_ids, response_ids in sequences:
            batch = collate([prompt_ids], [response_ids], pad_token_id=0)
            with autocast_context("cpu", bf16):
                logp, _ = token_logprobs(model, batch, temperature=1.0)
            out.append(logp[0, :len(response_ids)].float())
        return out

    rows: list[tuple[str, str, float, str, str]] = []  # (precision, comparison, ratio, probe, sampled)
    weights_rows: list[tuple[float, float, float]] = []  # (target ratio, measured ratio, bf16 unchanged share)

    def record(precision: str, comparison: str, ratio: float, probe_pair, sampled_pair=None) -> None:
        fmt = lambda pair: "-" if pair is None else f"{pair[0]:.2e} / {pair[1]:.2e}"  # noqa: E731
        rows.append((precision, comparison, ratio, fmt(probe_pair), fmt(sampled_pair)))
        print(f"  {precision} {comparison} ratio {ratio:g}: probe {fmt(probe_pair)}, sampled {fmt(sampled_pair)}",
              flush=True)

    def load_ratio(ratio: float) -> None:
        set_update_ratio(policy, start_adapters, ratio)
        control.load_state_dict(lora.merged_state_dict(policy), strict=False)
        if getattr(control.config, "tie_word_embeddings", False):
            control.tie_weights()

    for ratio in args.ratios:
        load_ratio(ratio)
        weights_rows.append((ratio, update_ratio(policy), bf16_unchanged_share(policy)))
    for ratio in args.ratios if "trainer" in args.parts else []:  # without the engine
        load_ratio(ratio)
        exact = scores(policy, [probe], False)
        for precision, bf16 in (("float32", False), ("bfloat16", True)):
            ours = scores(policy, [probe], bf16)
            record(f"- / {precision}", "trainer lora vs trainer control (merge rounding alone)", ratio,
                   _gap(ours, scores(control, [probe], bf16)))
            with lora.adapters_disabled(policy):
                record(f"- / {precision}", "trainer lora vs trainer base (the update itself)", ratio,
                       _gap(ours, scores(policy, [probe], bf16)))
        record("- / bfloat16", "trainer lora vs trainer lora in float32 (bf16 compute itself)", ratio,
               _gap(scores(policy, [probe], True), exact))
        record("- / bfloat16", "trainer control vs trainer lora in float32", ratio,
               _gap(scores(control, [probe], True), exact))

    for precision in args.dtypes if "merged" in args.parts else []:
        bf16 = precision == "bfloat16"
        engine = build_engine("vllm", policy, tokenizer, seed=0, max_model_len=1024, dtype=precision)
        for ratio in args.ratios:
            load_ratio(ratio)
            engine.update_weights(policy)  # what the trainer does: the merged tensors, float32, into the engine
            engine_probe = [torch.tensor(engine.response_logprobs(*probe))]
            rollouts = engine.generate(prompts, args.samples, sampling)
            engine_sampled = [torch.tensor(r.logprobs) for r in rollouts if r.response_ids]
            sequences = [(r.prompt_ids, r.response_ids) for r in rollouts if r.response_ids]
            for name, model in (("lora", policy), ("control", control)):
                record(f"{precision} / {precision}", f"vLLM merged push vs trainer {name}", ratio,
                       _gap(engine_probe, scores(model, [probe], bf16)),
                       _gap(engine_sampled, scores(model, sequences, bf16)))
            if not bf16:  # a float32 engine under a bf16 trainer: the engine exact, the trainer's bf16 compute apart
                record(f"{precision} / bfloat16", "vLLM merged push vs trainer lora", ratio,
                       _gap(engine_probe, scores(policy, [probe], True)),
                       _gap(engine_sampled, scores(policy, sequences, True)))
        engine.close()
        del engine

    if "request" in args.parts:
        requests = [{"prompt_token_ids": tokenizer(p, add_special_tokens=False)["input_ids"]}
                    for p in prompts for _ in range(args.samples)]
        for precision in args.dtypes:
            bf16 = precision == "bfloat16"
            llm = vllm.LLM(model=base_path, tokenizer=base_path, dtype=precision, seed=0, max_model_len=1024,
                           enforce_eager=True, enable_lora=True, max_lora_rank=args.rank, max_loras=1,
                           kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, logprobs_mode="processed_logprobs")
            with tempfile.TemporaryDirectory() as tmp:
                for index, ratio in enumerate(args.ratios):
                    load_ratio(ratio)
                    folder = Path(tmp) / f"adapter_{index}"
                    lora.save_adapter(policy, folder, base_model=base_path)
                    request = LoRARequest(f"policy-{precision}-{index}", index + 1, str(folder))
                    scored = llm.generate([{"prompt_token_ids": probe[0] + probe[1]}],
                                          vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0),
                                          use_tqdm=False, lora_request=request)[0]
                    engine_probe = [torch.tensor([float(step[token].logprob) for step, token
                                                  in zip(scored.prompt_logprobs[len(probe[0]):], probe[1])])]
                    params = [vllm.SamplingParams(max_tokens=args.max_new_tokens, temperature=1.0, seed=row,
                                                  logprobs=0, stop_token_ids=[tokenizer.eos_token_id])
                              for row in range(len(requests))]
                    outputs = llm.generate(requests, params, use_tqdm=False, lora_request=request)
                    sequences, engine_sampled = [], []
                    for req, output in zip(requests, outputs):
                        completion = output.outputs[0]
                        tokens = list(completion.token_ids)
                        if tokens:
                            sequences.append((req["prompt_token_ids"], tokens))
                            engine_sampled.append(torch.tensor(
                                [float(step[t].logprob) for step, t in zip(completion.logprobs, tokens)]))
                    record(f"{precision} / {precision}", "vLLM LoRA path (LoRARequest) vs trainer lora", ratio,
                           _gap(engine_probe, scores(policy, [probe], bf16)),
                           _gap(engine_sampled, scores(policy, sequences, bf16)))
            shutdown = getattr(llm.llm_engine, "shutdown", None)  # not every vLLM build's LLMEngine has one
            if shutdown is not None:
                shutdown()
            del llm

    print(f"\n{datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}; vLLM {vllm.__version__}, "
          f"torch {torch.__version__}, CPU {cpu_model_name()} ({os.cpu_count()} cores, {platform.machine()}); "
          f"command: {' '.join([_relative(sys.executable), *sys.argv])}")
    print(f"embedded model, LoRA r={args.rank} alpha 32 on all linear layers, adapters drawn and perturbed "
          f"(seed {args.seed}), B scaled to each |B·A·alpha/r| / |W|; probe: the sync check's "
          f"({len(probe[1])} response tokens); sampled: {args.prompts} prompts x {args.samples} samples, "
          f"<= {args.max_new_tokens} tokens, temperature 1")
    print("\n| ‖B·A·alpha/r‖ / ‖W‖ | merged weights whose bf16 value is the base's |\n|---|---|")
    for _ratio, measured, share in weights_rows:
        print(f"| {measured:.1e} | {share:.1%} |")
    print("\n| vLLM / trainer dtype | comparison | ‖BA‖/‖W‖ | probe max / mean abs(delta logp) "
          "| sampled max / mean |\n|---|---|---|---|---|")
    for precision, comparison, ratio, probe_text, sampled_text in rows:
        print(f"| {precision} | {comparison} | {ratio:g} | {probe_text} | {sampled_text} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--probe-gap", action="store_true", help="the log-prob gap tables instead of the timings")
    parser.add_argument("--ratios", type=float, nargs="+", default=[3e-3, 1e-2],
                        help="--probe-gap: the update sizes |B·A·alpha/r| / |W|")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                        help="--probe-gap: the engine precisions")
    parser.add_argument("--seed", type=int, default=0, help="--probe-gap: the adapters' draw")
    parser.add_argument("--parts", nargs="+", default=["trainer", "merged", "request"],
                        choices=["trainer", "merged", "request"],
                        help="--probe-gap: the trainer-only rows, the merged push, vLLM's LoRA path")
    args = parser.parse_args()
    if args.probe_gap:
        probe_gap(args)
        return

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
