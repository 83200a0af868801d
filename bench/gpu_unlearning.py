"""GPU figures of a MEOW unlearning step and of TOFU-eval / MEMO generation on a Llama-2-7B-shaped model.

Random weights at the real shapes (nothing can be downloaded), bf16, LoRA r=8 on every linear layer, sequence 512,
batch 4; the step is NLL on the inverted facts plus the KL to the reference (the base with the adapters switched off,
as `meow+kl` under LoRA). Printed: peak memory and tokens/s with gradient checkpointing on and off, model FLOPs
utilisation against the GPU's dense bf16 peak, and greedy generation tokens/s batched against one prompt at a time.
Goals: fits in 40 GB with checkpointing on; MFU >= 35%.

    python bench/gpu_unlearning.py                       # on a CUDA device; without one it says so and exits 0
    python bench/gpu_unlearning.py --tiny --device cpu   # the same code on a tiny shape, to check that it runs
    python bench/gpu_unlearning.py --json figures.json   # also the figures as JSON (bench/gpu_all.sh reads them)

Model FLOPs per step = 6 N T (N: parameters outside the embeddings, T: tokens): the policy's forward (2 N T), the
backward to its activations (2 N T; the frozen base needs no weight gradients) and the reference forward (2 N T).
Recomputation under checkpointing is not counted, as MFU conventionally does not.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from common.bench import Figures

# Dense bf16 peaks (TFLOP/s, no sparsity) by device name.
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "4090": 165.0}
SEVEN_B = dict(
    hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, vocab_size=32000
)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=256)


def build(shape: dict, device: str, dtype: torch.dtype):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(max_position_embeddings=4096, **shape)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    lora = LoraConfig(r=8, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def body_params(model) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embed_tokens" not in n and "lm_head" not in n)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def unlearning_steps(model, batch: dict, steps: int, checkpointing: bool, device: str) -> tuple[list[float], float]:
    """Seconds per optimizer step (after one warm-up step) and the peak memory in GB."""
    from common.lm import sequence_nll
    from common.models import without_adapters
    from methods.meow.losses import kl_to_reference

    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.activation_checkpointing_disable()
    model.train()
    reference = without_adapters(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(steps + 1):
        synchronize(device)
        start = time.perf_counter()
        nll, count, _ = sequence_nll(model, batch)
        loss = nll.sum() / count.sum() + kl_to_reference(model, reference, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if i > 0:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else float("nan")
    return times, peak


def generation(model, tokenizer_pad: int, prompts: torch.Tensor, new_tokens: int, batch_size: int) -> float:
    """Generated tokens per second, greedy, `batch_size` prompts at a time."""
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            model.generate(
                input_ids=chunk,
                attention_mask=torch.ones_like(chunk),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tokenizer_pad,
            )
    synchronize(str(prompts.device))
    return len(prompts) * new_tokens / (time.perf_counter() - start)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="a tiny Llama instead of the 7B shape (checks the code)")
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--prompts", type=int, default=32, help="generation: prompts of 64 tokens, 64 new tokens each")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak; default by name")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    figures = Figures(args.json, "gpu_unlearning")

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device present: the GPU figures need one (run on a GPU machine); nothing measured")
        figures.note("no CUDA")
        return 0
    cuda = args.device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = args.peak_tflops or next((v for k, v in PEAKS.items() if k in name), None)
    shape = TINY if args.tiny else SEVEN_B
    seq = min(args.seq, 64) if args.tiny else args.seq
    print(
        f"device: {name}; dtype {dtype}; shape {'tiny' if args.tiny else 'Llama-2-7B'}; seq {seq}, batch {args.batch}"
    )
    figures.device(f"{name}; {'tiny' if args.tiny else 'Llama-2-7B'} shape, seq {seq}, batch {args.batch}")

    torch.manual_seed(0)
    model = build(shape, args.device, dtype)
    n_body = body_params(model)
    ids = torch.randint(3, shape["vocab_size"], (args.batch, seq), device=args.device)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    tokens = args.batch * seq
    for checkpointing in (True, False):
        label = f"checkpointing {'on ' if checkpointing else 'off'}"
        try:
            times, peak_gb = unlearning_steps(model, batch, args.steps, checkpointing, args.device)
        except torch.cuda.OutOfMemoryError:
            print(f"{label}: out of memory")
            figures.add(f"step, {label.strip()}", "out of memory")
            torch.cuda.empty_cache()
            continue
        step = statistics.median(times)
        mfu = 6 * n_body * tokens / step / (peak * 1e12) if peak else float("nan")
        print(
            f"{label}: {step * 1e3:.0f} ms/step (min {min(times) * 1e3:.0f}, max {max(times) * 1e3:.0f}), "
            f"{tokens / step:,.0f} tokens/s, peak {peak_gb:.1f} GB (goal <= 40 with checkpointing), "
            f"MFU {mfu:.1%} (goal >= 35%; peak {peak} TFLOP/s)"
        )
        on = label.strip()
        figures.spread(f"step, {on}", [t * 1e3 for t in times], "ms")
        figures.add(f"throughput, {on}", tokens / step, "tokens/s")
        figures.add(f"peak memory, {on}", peak_gb, "GB", "<= 40" if checkpointing else "")
        figures.add(f"MFU, {on}", mfu * 100, f"% of {peak} TFLOP/s" if peak else "% (peak unknown)", ">= 35")

    prompts = torch.randint(3, shape["vocab_size"], (args.prompts, 64), device=args.device)
    new = 8 if args.tiny else 64
    single = generation(model, 0, prompts[: max(2, args.prompts // 8)], new, batch_size=1)
    batched = generation(model, 0, prompts, new, batch_size=args.prompts)
    print(f"generation: batched {batched:,.0f} tokens/s, one at a time {single:,.0f} tokens/s: {batched / single:.1f}x")
    figures.add(f"generation, batched ({args.prompts} prompts)", batched, "tokens/s")
    figures.add("generation, one at a time", single, "tokens/s")
    figures.add("generation, batched / one at a time", batched / single, "x")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
