"""Measure sampling and training speed, the fast path beside the plain reference path, on random weights.

Builds the config's model with random weights (no checkpoint needed), then measures ms per DDIM step of its
sampler (the collaborative step for a collaborative config) and the images/s of 50-step sampling at each
batch size, with --train the images/s of a training step of every stage (each expert; the dynamic diffusers),
peak memory, and the achieved FLOP/s (FLOPs counted once per model; --peak-tflops gives the fraction of a
stated peak). --reference also runs the plain path (fp32, explicit softmax attention, checkpointing on, no
compile) in the same run on the same weights, x_T (eta 0) and training draws, checks that the outputs agree
and prints the speed-up. Exit code 1 if they disagree. --equal-quality also times whole sampling runs of the
released sampler (DDIM 50, eta 1) and of the recommended fewer-step one, closest to it in quality
(docs/samplers.md), and prints the images/s of both and the speed-up. Details: docs/performance.md.

Examples:
  # CPU, the whole paper configuration at batch 1, 5 DDIM steps, fast fp32 path against the reference
  python scripts/benchmark.py --config configs/256_codiff_mask_text.yaml --device cpu --batch-sizes 1 --steps 5 --reference
  # one H100: the issue's measurement (bf16, compiled, channels_last) against the reference, with training
  python scripts/benchmark.py --config configs/256_codiff_mask_text.yaml --device cuda --batch-sizes 1 8 16 32 \\
      --precision bf16 --compile --channels-last --reference --train --train-batch-sizes 8 --peak-tflops 790 --json bench.json
  # images/s at equal quality: the recommended sampler against DDIM 50, on the fast path
  python scripts/benchmark.py --config configs/256_codiff_mask_text.yaml --device cuda --batch-sizes 8 --steps 5 \
      --precision bf16 --channels-last --equal-quality
  # bf16 sampling with the weights held in bf16 (the default) and with autocast casting them at every call
  python scripts/benchmark.py --config configs/256_codiff_mask_text.yaml --device cpu --batch-sizes 1 --steps 4 \
      --repeats 2 --warmup 1 --precision bf16 --channels-last --no-flops [--no-held-weights]
  # where a step's time goes: torch.profiler over 5 fast-path steps at batch 16 (top operations, the GPU kernels' time per step)
  python scripts/benchmark.py --config configs/256_codiff_mask_text.yaml --device cuda --batch-sizes 16 --steps 20 \
      --precision bf16 --channels-last --profile-batch 16 --profile-out profile_b16.txt
  # the tiny chain, in seconds
  python scripts/benchmark.py --config configs/tiny/codiff.yaml --batch-sizes 1 --steps 4 --reference --train
"""

import json
import sys
from pathlib import Path

import torch

from ldm.benchmark import BenchmarkSettings, benchmark, format_report, profile_summary
from ldm.cli import main_guard, make_parser, setup_logging
from ldm.errors import UserError
from ldm.speed import SpeedOptions


def parse(argv):
    p = make_parser(__doc__)
    p.add_argument("--config", required=True, help="an LDM or collaborative config (weights are random)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32], help="sampling batch sizes")
    p.add_argument("--steps", type=int, default=50, help="timed DDIM steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed DDIM steps first (compilation happens there)")
    p.add_argument("--repeats", type=int, default=1, help="timed sampling runs per batch size (median over all steps)")
    p.add_argument("--reference", action="store_true", help="also run the plain path, check agreement, print speed-ups")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"], help="fast path autocast precision")
    p.add_argument("--compile", action="store_true", help="fast path: torch.compile the UNets")
    p.add_argument("--channels-last", action="store_true", help="fast path: channels_last memory format")
    p.add_argument("--attention", default="sdpa", choices=["sdpa", "math"], help="fast path attention")
    p.add_argument("--checkpointing", default="off", choices=["on", "off"], help="fast path gradient checkpointing (training)")
    p.add_argument("--no-streams", action="store_true", help="fast path: no separate CUDA streams for the networks of a step")
    p.add_argument("--no-held-weights", action="store_true",
                   help="fast path, bf16/fp16 sampling: autocast casts the weights at every call instead of a low-precision "
                        "copy held while sampling (less memory, more operations per step)")
    p.add_argument("--equal-quality", action="store_true",
                   help="also time whole runs of DDIM 50 and of the recommended sampler of equal quality (docs/samplers.md)")
    p.add_argument("--train", action="store_true", help="also measure a training step of every stage")
    p.add_argument("--train-batch-sizes", type=int, nargs="+", default=None, help="training batch sizes (default: --batch-sizes)")
    p.add_argument("--train-steps", type=int, default=3, help="timed training steps per stage and batch size")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak TFLOP/s at this precision, for the fraction achieved")
    p.add_argument("--no-flops", action="store_true", help="do not count FLOPs (saves one step per network)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights, conditions and x_T")
    p.add_argument("--profile-batch", type=int, default=None,
                   help="after the measurements, torch.profiler over --profile-steps sampling steps of the fast path at "
                        "this batch size: the top operations and, on CUDA, the GPU kernels' ms per step")
    p.add_argument("--profile-steps", type=int, default=5, help="sampling steps to profile (default 5)")
    p.add_argument("--profile-out", default=None, help="write the profile's table of top operations to this text file")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("overrides", nargs="*", help="config overrides key=value")
    return p.parse_args(argv)


@main_guard
def main(argv=None):
    args = parse(argv)
    setup_logging()
    if not 1 <= args.steps <= 1000 or args.warmup < 0 or args.repeats < 1 or args.train_steps < 1:
        raise UserError("--steps must be 1-1000, --warmup >= 0, --repeats >= 1 and --train-steps >= 1")
    if args.profile_out and args.profile_batch is None:
        raise UserError("--profile-out needs --profile-batch B (the batch size to profile)")
    if args.profile_steps < 1:
        raise UserError("--profile-steps must be >= 1")
    if min(args.batch_sizes + (args.train_batch_sizes or []) + ([args.profile_batch] if args.profile_batch is not None else [])) < 1:
        raise UserError("batch sizes must be positive")
    speed = SpeedOptions(precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                         attention=args.attention, checkpointing=args.checkpointing == "on", streams=not args.no_streams,
                         hold_weights=not args.no_held_weights)
    settings = BenchmarkSettings(
        config=args.config, overrides=args.overrides, device=args.device, batch_sizes=args.batch_sizes,
        steps=args.steps, warmup=args.warmup, repeats=args.repeats, train=args.train,
        train_batch_sizes=args.train_batch_sizes, train_steps=args.train_steps, reference=args.reference,
        speed=speed, peak_tflops=args.peak_tflops, count_flops=not args.no_flops, seed=args.seed,
        equal_quality=args.equal_quality, profile_batch=args.profile_batch, profile_steps=args.profile_steps,
    )
    report = benchmark(settings, log=print)
    print()
    print(format_report(report))
    if args.profile_out and report.profile is not None:
        Path(args.profile_out).write_text(profile_summary(report) + "\n\n" + report.profile.table + "\n")
        print(f"wrote {args.profile_out}")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
        print(f"wrote {args.json}")
    return 0 if report.agree else 1


if __name__ == "__main__":
    sys.exit(main())
