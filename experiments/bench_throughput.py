#!/usr/bin/env python
"""Issue 9's figures, each measured in one run and printed with the machine it ran on.

    python experiments/bench_throughput.py                  # every section
    python experiments/bench_throughput.py --quick          # short, for a small shared CPU (under 5 minutes)
    python experiments/bench_throughput.py --local --device cuda --batch-sizes 64,128,256
    python experiments/bench_throughput.py --optimizers --model-rate 3000   # overhead against a faster model

Sections (default: all):

- ``--local``: images/s through the whole optimizer step (ask, compose the prompt and quantize it to
  uint8, the reference model's query, output mapping, loss, tell; through the counting and journal
  wrappers the run uses) against the bare model's forward pass on a preallocated float tensor at the
  same batch size, interleaved round by round in one process. Target: ratio >= 0.9. On CUDA, and on
  CPUs with AMX or AVX512-BF16, also with bf16 autocast (``TorchClassifierBackend(precision="bf16")``);
  channels-last as the backend sets it.
- ``--optimizers``: seconds of ask + tell of every registered optimizer (and ng:OnePlusOne) at prompt
  dimensions 100, 1000 and 10000 against the model's time for the images of one step (the step
  path's measured seconds per image x candidates x batch). Target: overhead <= 2%. Full covariance
  ``cma`` is skipped above 3000 dimensions (O(d^2) memory and time; use diag-cma there).
- ``--http``: the toy backend behind the reference server (``bbvp serve``'s code, in a subprocess so
  that it has its own interpreter) with 50 ms added latency: requests/s at concurrency C = 1, 4, 16
  against C / latency, capped by the server's own limit (measured without latency). Target: >= 0.8.
  Then images/s with several images per request (bbvp and oip-v2 formats).
- ``--memory``: peak resident memory of whole runs (``blackbox_vp.optimize``, toy backend, in fresh
  subprocesses) at budgets of 10k and 100k images. Target: about the same (ratio near 1).

Wall-clock figures on a machine shared with other processes are noisy; the local section therefore
alternates bare and step measurements and reports the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backends import CountingBackend  # noqa: E402
from backends.torch_classifier import efficientnet_lite_backend  # noqa: E402
from blackbox_vp.journal import Journal, JournaledBackend, Ledger  # noqa: E402
from blackbox_vp.losses import LOSSES  # noqa: E402
from blackbox_vp.mappings import FrequencyMapping  # noqa: E402
from blackbox_vp.optimizers import make_optimizer, search_names  # noqa: E402
from blackbox_vp.parameterizations import PARAMETERIZATIONS  # noqa: E402
from blackbox_vp.prompts import PaddingPrompt  # noqa: E402

CLASSES = 10
STEP_BATCH = 32  # training images per candidate in a step (RunConfig.batch_size's default)
FULL_CMA_MAX_DIMENSION = 3000


# The machine ---------------------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_has_bf16() -> bool:
    """Whether the CPU computes in bfloat16 natively (AMX or AVX512-BF16), where bf16 autocast pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(amx_bf16|avx512_bf16)\b", flags))


def machine_line(device: str) -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    gpu = ""
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = f"; GPU {torch.cuda.get_device_name(torch.device(device))}"
    return (f"machine: {platform.node()}, {cpu_name()}, {os.cpu_count()} CPUs, load average {load}{gpu}; "
            f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"numpy {np.__version__}")


def heading(title: str) -> None:
    print(f"\n== {title}", flush=True)


# Local: the whole step against the bare forward pass ------------------------------------------------
class StepPath:
    """One optimization step as the run takes it (blackbox_vp.run.Run.step), on fixed data."""

    def __init__(self, backend, optimizer: str, batch: int, seed: int, journal_path: Path):
        size = tuple(backend.image_size)
        width = round(32 * min(size) / 224)
        self.prompt = PaddingPrompt(size, width=width, parameterization=PARAMETERIZATIONS.get("grid")(size, grid=8))
        rng = np.random.default_rng(seed)
        self.images = rng.integers(0, 256, (batch, *self.prompt.inner_size, 3), dtype=np.uint8)
        self.labels = rng.integers(0, CLASSES, batch)
        scores = torch.from_numpy(rng.dirichlet(np.ones(backend.num_labels), size=200))
        self.mapping = FrequencyMapping().fit(scores, torch.from_numpy(rng.integers(0, CLASSES, 200)), CLASSES)
        self.loss = LOSSES.get("ce")
        self.optimizer = make_optimizer(optimizer, self.prompt.initial(), seed=seed)
        self.ledger = Ledger()
        self.journal = Journal(journal_path)
        self.backend = CountingBackend(JournaledBackend(backend, self.journal, self.ledger), budget=None)
        self.model_timer = backend.model if isinstance(backend.model, TimedModule) else None
        self.parts: dict[str, float] = {}

    @property
    def images_per_step(self) -> int:
        return self.optimizer.candidates_per_step * len(self.images)

    def step(self) -> None:
        """One step; adds its parts' seconds to :attr:`parts` (the model's forward passes apart)."""
        clock = time.perf_counter
        model_before = self.model_timer.seconds
        with self.ledger.during("optimization"):
            t0 = clock()
            candidates = self.optimizer.ask()
            t1 = clock()
            pixels = self.prompt.apply(candidates, self.images)
            t2 = clock()
            scores = torch.from_numpy(self.backend.query(pixels))
            t3 = clock()
            labels = torch.from_numpy(self.labels).repeat(len(candidates))
            probabilities = self.mapping.probabilities(scores)
            losses = self.loss(probabilities, labels).view(len(candidates), -1).mean(dim=1).numpy()
            self.optimizer.tell(candidates, losses)
            t4 = clock()
        model = self.model_timer.seconds - model_before
        for name, seconds in (("ask+tell+loss", t1 - t0 + t4 - t3), ("prompt", t2 - t1),
                              ("query but the model", t3 - t2 - model), ("model", model), ("step", t4 - t0)):
            self.parts[name] = self.parts.get(name, 0.0) + seconds

    def close(self) -> None:
        self.journal.close()


class TimedModule(torch.nn.Module):
    """Wraps the backend's model to add up the seconds of its forward passes (inside the step)."""

    def __init__(self, inner: torch.nn.Module, device: torch.device):
        super().__init__()
        self.inner, self.device, self.seconds = inner, device, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        synchronize(self.device)
        started = time.perf_counter()
        out = self.inner(x)
        synchronize(self.device)
        self.seconds += time.perf_counter() - started
        return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_forward(backend, batch: int):
    """A function running the bare model once on a preallocated normalized float batch (no conversions)."""
    device = backend.device
    x = torch.rand(batch, 3, *backend.image_size, device=device)
    x = ((x - backend.mean) / backend.std).contiguous(memory_format=backend.memory_format)

    def forward() -> None:
        with torch.inference_mode(), backend.autocast():
            backend.model(x)
        synchronize(device)

    return forward


def set_threads(args: argparse.Namespace) -> None:
    """--threads, after the backend has set its own (every core)."""
    if args.threads:
        torch.set_num_threads(args.threads)


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def bench_local(args: argparse.Namespace) -> dict:
    heading(f"local: whole step vs bare forward, EfficientNet-Lite0 on {args.device} "
            f"(optimizer {args.local_optimizer}, prompt padding 32 px at 224, grid 8; {args.rounds} rounds, alternated)")
    precisions = ["fp32", "bf16"] if args.device.startswith("cuda") else args.precisions or (
        ["fp32", "bf16"] if cpu_has_bf16() else ["fp32"])
    per_image = {}
    print("bare, step: images/s of the best round (least disturbed by other processes); ratio: best step / best "
          "bare;\nmodel share: the step's time inside the model's forward passes, measured within the same steps")
    print(f"{'precision':>9} {'batch':>5} {'img/step':>8} {'bare':>7} {'step':>7} {'ratio':>6} {'model share':>11}  "
          "target >= 0.9")
    for precision in precisions:
        backend = efficientnet_lite_backend(device=args.device, max_batch=max(args.batch_sizes), precision=precision)
        set_threads(args)
        bare_model = backend.model
        for batch in args.batch_sizes:
            backend.max_batch = batch
            backend.model = bare_model
            forward = bare_forward(backend, batch)
            backend.model = TimedModule(bare_model, backend.device)
            with tempfile.TemporaryDirectory() as folder:
                path = StepPath(backend, args.local_optimizer, batch, args.seed, Path(folder) / "journal.jsonl")
                calls = path.optimizer.candidates_per_step  # forward calls of `batch` images in one step
                path.step()  # warm-up: first calls, allocator, optimizer set-up
                forward()
                path.parts.clear()
                bare_times, step_times = [], []
                for r in range(args.rounds):
                    for which in ((0, 1) if r % 2 == 0 else (1, 0)):  # alternated, so that drift in the load cancels
                        if which == 0:
                            bare_times.append(sum(timed(forward) for _ in range(calls)))
                        else:
                            step_times.append(timed(path.step))
                path.close()
            images = path.images_per_step
            bare_rate, step_rate = images / min(bare_times), images / min(step_times)
            share = path.parts["model"] / path.parts["step"]
            ratio = step_rate / bare_rate
            print(f"{precision:>9} {batch:>5} {images:>8} {bare_rate:>7.1f} {step_rate:>7.1f} {ratio:>6.3f} "
                  f"{share:>11.3f}  {'ok' if min(ratio, share) >= 0.9 else 'BELOW'}", flush=True)
            steps = args.rounds
            print("          per step, ms: " + ", ".join(f"{name} {1000 * seconds / steps:.1f}"
                                                     for name, seconds in path.parts.items()), flush=True)
            per_image[(precision, batch)] = min(step_times) / images
        backend.model = bare_model
    return {"seconds_per_image": min(per_image.values())}


# Optimizer overhead -------------------------------------------------------------------------------
def bench_optimizers(args: argparse.Namespace, seconds_per_image: float | None) -> None:
    if args.model_rate:
        seconds_per_image = 1.0 / args.model_rate
        source = f"--model-rate {args.model_rate:g} images/s"
    elif seconds_per_image is None:
        seconds_per_image = measure_model_rate(args)
        source = "the bare forward pass measured now"
    else:
        source = "the local section's step path"
    heading(f"optimizers: ask + tell vs the model's time for the step's images ({1 / seconds_per_image:.1f} "
            f"images/s, from {source}; {STEP_BATCH} images per candidate)")
    names = search_names()
    print("2% up to: the model's images/s at which this optimizer's overhead would reach 2% (e.g. on a GPU)")
    print(f"{'optimizer':>14} {'dim':>6} {'cands':>5} {'ask+tell ms':>11} {'model s/step':>12} {'overhead':>8}"
          f"  {'2% up to':>12}  target <= 2%")
    worst = 0.0
    for name in names:
        for dimension in args.dimensions:
            if name == "cma" and dimension > FULL_CMA_MAX_DIMENSION:
                print(f"{name:>14} {dimension:>6}  skipped: O(d^2) (use diag-cma)")
                continue
            rng = np.random.default_rng(0)
            optimizer = make_optimizer(name, np.zeros(dimension), seed=0)

            def one_step(optimizer=optimizer, rng=rng) -> None:
                candidates = optimizer.ask()
                optimizer.tell(candidates, rng.random(len(candidates)))

            one_step()  # set-up work of the first step
            times = [timed(one_step) for _ in range(args.optimizer_steps)]
            seconds = statistics.median(times)
            model = optimizer.candidates_per_step * STEP_BATCH * seconds_per_image
            overhead = seconds / (seconds + model)
            worst = max(worst, overhead)
            limit = optimizer.candidates_per_step * STEP_BATCH / (49 * seconds)  # model = 49 x optimizer: 2%
            print(f"{name:>14} {dimension:>6} {optimizer.candidates_per_step:>5} {1000 * seconds:>11.2f} "
                  f"{model:>12.2f} {100 * overhead:>7.3f}%  {limit:>8.0f} i/s  {'ok' if overhead <= 0.02 else 'ABOVE'}",
                  flush=True)
    print(f"worst overhead: {100 * worst:.3f}% of a step's wall time")


def measure_model_rate(args: argparse.Namespace) -> float:
    """Seconds per image of the bare model at batch 16 (when the local section did not run)."""
    backend = efficientnet_lite_backend(device=args.device, max_batch=16)
    set_threads(args)
    forward = bare_forward(backend, 16)
    forward()
    return min(timed(forward) for _ in range(2)) / 16


# HTTP ----------------------------------------------------------------------------------------------
SERVER = """
import sys
from backends.toy import ToyBackend
from backends.http.server import Faults, Limits, serve
serve(ToyBackend(), "127.0.0.1", 0, name="toy", faults=Faults(latency=float(sys.argv[1])),
      limits=Limits(max_batch=256))
"""


@contextlib.contextmanager
def server(latency: float):
    """The reference server with the toy model in a subprocess on a free loopback port; yields its URL."""
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(latency)], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    try:
        line = process.stdout.readline()
        match = re.search(r"http://127\.0\.0\.1:\d+", line)
        if not match:
            raise RuntimeError(f"the server did not start: {line}{process.stdout.read() if process.poll() else ''}")
        yield match.group(0)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def requests_per_second(url: str, format: str, concurrency: int, per_request: int,
                        requests: int) -> tuple[float, float]:
    """(requests/s, images/s) of one query split into ``requests`` requests of ``per_request`` images."""
    from backends.http import HTTPBackend

    backend = HTTPBackend(url, format, concurrency=concurrency, max_batch=per_request)
    try:
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, (per_request * requests, *backend.image_size, 3), dtype=np.uint8)
        backend.query(images[: per_request * concurrency])  # open the connections
        before = backend.requests
        seconds = timed(lambda: backend.query(images))
        sent = backend.requests - before
        return sent / seconds, len(images) / seconds
    finally:
        backend.close()


def bench_http(args: argparse.Namespace) -> None:
    latency = args.latency
    heading(f"HTTP: toy backend behind the reference server (subprocess, loopback), {1000 * latency:.0f} ms added "
            "latency per request")
    rounds = args.http_rounds
    with server(0.0) as url:  # the server's limit: its best rate without added latency
        limit = max(requests_per_second(url, "bbvp", concurrency, 1, rounds * concurrency)[0]
                    for concurrency in args.concurrency)
    print(f"server limit without added latency (one image per request, best of C={args.concurrency}): "
          f"{limit:.0f} req/s")
    print(f"{'C':>3} {'requests':>8} {'req/s':>8} {'C/latency':>9} {'target':>8} {'ratio':>6}  target >= 0.8 x "
          "min(C/latency, limit)")
    with server(latency) as url:
        for concurrency in args.concurrency:
            count = rounds * concurrency
            rate, _ = requests_per_second(url, "bbvp", concurrency, 1, count)
            ideal = concurrency / latency
            target = min(ideal, limit)
            ratio = rate / target
            print(f"{concurrency:>3} {count:>8} {rate:>8.1f} {ideal:>9.1f} {0.8 * target:>8.1f} {ratio:>6.3f}  "
                  f"{'ok' if ratio >= 0.8 else 'BELOW'}", flush=True)
        from backends.toy import ToyBackend

        toy = ToyBackend()
        images = np.random.default_rng(0).integers(0, 256, (1024, *toy.image_size, 3), dtype=np.uint8)
        toy.query(images[:8])
        local = len(images) / min(timed(lambda: toy.query(images)) for _ in range(3))
        concurrency, per_request = 4, args.http_batch
        print(f"several images per request (C={concurrency}, {per_request} images a request; local toy "
              f"{local:.0f} images/s):")
        _, single = requests_per_second(url, "bbvp", concurrency, 1, rounds * concurrency)
        print(f"  {'bbvp, 1 image/request':>26}: {single:>8.1f} images/s")
        for format in ("bbvp", "oip-v2"):
            _, batched = requests_per_second(url, format, concurrency, per_request, rounds * concurrency)
            label = f"{format}, {per_request} images/request"
            print(f"  {label:>26}: {batched:>8.1f} images/s, x{batched / single:.1f} "
                  f"one image a request, {batched / local:.3f} of local", flush=True)


# Memory --------------------------------------------------------------------------------------------
CHILD = """
import json, re, resource, sys, time
from blackbox_vp import RunConfig, optimize
budget, out, optimizer = int(sys.argv[1]), sys.argv[2], sys.argv[3]
started = time.perf_counter()
result = optimize(RunConfig(backend="toy", data="digits", optimizer=optimizer, budget=budget, seed=0, quiet=True,
                            out=out))
try:  # this process's own high-water mark; ru_maxrss may keep the parent's size from before exec
    peak = int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
except (OSError, AttributeError):
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kib": peak, "steps": result.steps, "images": result.queries_used,
                  "seconds": time.perf_counter() - started}))
"""


ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def bench_memory(args: argparse.Namespace) -> None:
    heading(f"memory: peak resident memory of whole runs (toy backend, digits, {args.memory_optimizer}, "
            "batch 32, a fresh subprocess each, one thread: " + " ".join(f"{k}=1" for k in ONE_THREAD) + ")")
    rows = []
    for budget in args.budgets:
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "run"
            done = subprocess.run([sys.executable, "-c", CHILD, str(budget), str(out), args.memory_optimizer],
                                  cwd=ROOT, capture_output=True, text=True, check=False,
                                  env={**os.environ, **ONE_THREAD})
            if done.returncode:
                raise RuntimeError(f"the run with budget {budget} failed:\n{done.stderr[-2000:]}")
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["journal_kib"] = (out / "journal.jsonl").stat().st_size / 1024
            rows.append((budget, row))
            print(f"budget {budget:>7}: {row['images']:>7} images, {row['steps']:>5} steps, {row['seconds']:6.1f} s, "
                  f"peak RSS {row['peak_kib'] / 1024:7.1f} MiB, journal {row['journal_kib']:7.1f} KiB", flush=True)
    if len(rows) >= 2:
        (small, a), (large, b) = rows[0], rows[-1]
        print(f"peak RSS at {large} / at {small}: {b['peak_kib'] / a['peak_kib']:.3f} (target: about 1; "
              f"{b['steps'] / max(a['steps'], 1):.1f}x the steps)")


# Main ----------------------------------------------------------------------------------------------
def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for section in ("local", "optimizers", "http", "memory"):
        parser.add_argument(f"--{section}", action="store_true", help=f"run the {section} section (default: all)")
    parser.add_argument("--quick", action="store_true", help="fewer batch sizes, rounds and requests (small CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-sizes", type=int_list, help="local: batch sizes (default: 8,16,32 on CPU, "
                        "32,64,128,256 on CUDA; --quick 8,16)")
    parser.add_argument("--threads", type=int, help="torch threads on a CPU (default: the backend's, one per "
                        "core; on a machine shared with other processes 1 can be much faster)")
    parser.add_argument("--precisions", type=lambda s: s.split(","),
                        help="local on CPU: fp32 and/or bf16 (default: both where the CPU has AMX or AVX512-BF16, "
                        "else fp32; on CUDA both always)")
    parser.add_argument("--rounds", type=int, help="local: measured rounds per batch size (default 5, --quick 3)")
    parser.add_argument("--local-optimizer", default="spsa", help="local: optimizer of the step (default spsa, "
                        "2 candidates a step; its own cost is the --optimizers section)")
    parser.add_argument("--dimensions", type=int_list, default=[100, 1000, 10000])
    parser.add_argument("--optimizer-steps", type=int, help="optimizers: timed steps each (default 10, --quick 3)")
    parser.add_argument("--model-rate", type=float, help="optimizers: compare against this many model images/s "
                        "instead of the measured rate (e.g. a GPU's)")
    parser.add_argument("--latency", type=float, default=0.05, help="HTTP: added latency in seconds (default 0.05)")
    parser.add_argument("--concurrency", type=int_list, default=[1, 4, 16])
    parser.add_argument("--http-rounds", type=int, help="HTTP: requests per unit of concurrency (default 50, "
                        "--quick 20)")
    parser.add_argument("--http-batch", type=int, default=32, help="HTTP: images per request when batching")
    parser.add_argument("--budgets", type=int_list, default=[10_000, 100_000])
    parser.add_argument("--memory-optimizer", default="cma")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not any(getattr(args, s) for s in ("local", "optimizers", "http", "memory")):
        args.local = args.optimizers = args.http = args.memory = True
    cuda = args.device.startswith("cuda")
    args.batch_sizes = args.batch_sizes or ([32, 64, 128, 256] if cuda else [8, 16] if args.quick else [8, 16, 32])
    args.rounds = args.rounds or (3 if args.quick else 5)
    args.optimizer_steps = args.optimizer_steps or (3 if args.quick else 10)
    args.http_rounds = args.http_rounds or (20 if args.quick else 50)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    print(machine_line(args.device), flush=True)
    seconds_per_image = None
    if args.local:
        seconds_per_image = bench_local(args)["seconds_per_image"]
    if args.optimizers:
        bench_optimizers(args, seconds_per_image)
    if args.http:
        bench_http(args)
    if args.memory:
        bench_memory(args)
    print(f"\n{machine_line(args.device)}\ntotal {time.perf_counter() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
