"""Fast paths vs the official code's cost profile: train step, evaluation throughput, peak memory.

For each backbone x method x class count, one process measures two modes of our own code on the same
random-weight backbone, the same initial prompts and the same JPEG files:

* fast      - text context trimmed to the longest class prompt, text features once per evaluation,
              decoded-image cache (warm), bf16/fp16 autocast on GPU (fp32 on CPU);
* reference - what the official implementations pay: full context (77 tokens for CLIP), class prompts
              re-encoded for every evaluation batch, every JPEG decoded every epoch, fp32.
(`--compile` adds a third mode: fast + `torch.compile` of the method, its compile time reported.)

It then checks that both modes compute the same thing, in fp32: logits of the train path and of the
cached-text evaluation path, the loss and its gradients on a small batch, and the mean training losses of
the timed runs (those depend on the first steps' gradients). Any relative difference above --rtol
(max |a-b| / max |b| per tensor; default 1e-5 on CPU; 10x that for gradients) fails the run with exit
status 1.

    .venv/bin/python benchmarks/bench_fast_paths.py             # full run (CPU plan keeps it ~10 min)
    .venv/bin/python benchmarks/bench_fast_paths.py --quick     # tiny backbone, a few steps (CI)
    .venv/bin/python benchmarks/bench_fast_paths.py --profile --backbones ViT-B-16 --methods mudpt --classes 100

Results: a rich table on stdout, plus fast_paths.json and fast_paths.md under --out.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from a checkout: import this tree's mudpt and baselines
    sys.path.insert(0, str(REPO))

from mudpt.errors import UserError  # noqa: E402  (imports nothing heavy)

DEFAULT_METHODS = ("mudpt", "maple", "coop", "vpt-deep", "ivlp")
DEFAULT_BACKBONES = ("tiny", "ViT-B-16")
DEFAULT_CLASSES = (10, 100, 1000)
# tests/conftest.py's tiny CLIP: CLIP's 77-token text context, so trimming is measured as on a real CLIP.
TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 3},
}
TINY_NAME = "bench-tiny"
# Class names are 1-3 of these common words, drawn with a fixed seed: prompts a few
# tokens long, like most dataset class names. The table's L column shows the resulting context length.
WORDS = """apple bear bird boat book bottle bowl bread bridge bus butterfly cake camera car castle cat chair
cloud clock coat cow cup desk dog door duck eagle egg elephant fish flower fork fox frog garden glass goat
guitar hat horse house island jacket kite knife lamp leaf lion mountain mouse orange owl palm pear pen
piano pig pizza plane plant rabbit river road rock rose sand sheep shirt shoe snake snow spoon star
stone street table tiger tower train tree truck turtle wall watch whale wheel window wolf wood zebra
red green blue black white brown small large old young wild little golden silver dark bright spotted
striped long short round""".split()


class BenchError(UserError):
    """Bad arguments; the message says which and what is expected."""


# --------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class Mode:
    name: str
    trim_text: bool
    cache_text: bool
    image_cache: bool
    precision: str  # fp32 | bf16 | fp16
    compile: bool = False


@dataclass
class Plan:
    """What one backbone is measured on; `notes` say why anything was reduced."""

    backbone: str
    train_classes: list[int]
    eval_classes: list[int]
    methods: list[str]
    iters: int
    warmup: int
    batch: int
    eval_batch: int
    eval_batches: int
    check_images: int
    grad_check_classes: list[int]
    check_classes: int | None = None  # None: the whole class set
    repeats: int = 1  # timed train runs per measurement; the best one is reported
    eval_repeats: int = 1  # the same for evaluations
    large_eval_methods: list[str] | None = None  # methods whose evaluation is timed above 100 classes (None: all)
    notes: list[str] = field(default_factory=list)


@dataclass
class ModeResult:
    mode: str
    text_len: int
    train_step_s: float | None = None
    train_step_cpu_s: float | None = None  # process CPU time (all threads): less sensitive to other load
    train_peak_mib: float | None = None
    train_losses: list[float] = field(default_factory=list)
    eval_images_per_s: float | None = None
    eval_seconds: float | None = None
    eval_cpu_s: float | None = None
    eval_peak_mib: float | None = None
    eval_preds: list[int] = field(default_factory=list, repr=False)
    compile_warmup_s: float | None = None


@dataclass
class Check:
    logits_train_rel: float
    logits_eval_rel: float
    loss_rel: float
    grad_rel: float | None
    train_loss_rel: float | None
    eval_pred_agreement: float | None
    rtol: float
    compiled_train_loss_rel: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class Row:
    backbone: str
    method: str
    classes: int
    modes: dict[str, ModeResult]
    check: Check

    def ratio(self, attr: str, a: str = "fast", b: str = "reference", higher_is_better: bool = False):
        x, y = getattr(self.modes[a], attr, None), getattr(self.modes[b], attr, None)
        if x is None or y is None or x <= 0 or y <= 0:
            return None
        return x / y if higher_is_better else y / x


# --------------------------------------------------------------------------- measurement helpers
def rel_diff(a, b) -> float:
    """max |a - b| / max |b|: one number per tensor pair, stable where single entries are near zero."""
    import torch

    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _malloc_trim() -> None:
    """Give freed heap back to the OS so the next RSS baseline is not inflated by earlier runs."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss


class PeakMemory:
    """Peak working memory of a block, above what was allocated when it started (model, data excluded).

    CUDA: torch.cuda.max_memory_allocated (exact, tensors only). CPU: the process's resident set size,
    sampled every 2 ms by a thread after malloc_trim; it includes allocator slack and anything else
    the process touches, and can miss a peak shorter than the sampling interval.
    """

    def __init__(self, device):
        self.device = device
        self.mib: float | None = None
        self._stop = threading.Event()

    def __enter__(self) -> "PeakMemory":
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()
            self._base = self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.mib = (peak - self._base) / 2**20


def class_names(n: int, seed: int = 0) -> list[str]:
    import random

    rng = random.Random(seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        k = rng.choices((1, 2, 3), weights=(5, 4, 2))[0]
        name = " ".join(rng.sample(WORDS, k))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _load_image_helpers():
    """The data helper's JPEG generator (benchmarks/bench_image_cache.py), imported by path."""
    import importlib.util

    path = Path(__file__).with_name("bench_image_cache.py")
    spec = importlib.util.spec_from_file_location("bench_image_cache", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.make_images


def load_backbone(name: str, device):
    """A frozen open_clip model with random weights, wrapped for prompting. `tiny` is the test config."""
    import torch

    import mudpt.compat  # noqa: F401  (before open_clip)
    import open_clip

    from mudpt.promptable import PromptableCLIP

    torch.manual_seed(0)
    if name == "tiny":
        from open_clip.factory import _MODEL_CONFIGS

        if TINY_NAME not in _MODEL_CONFIGS:
            _MODEL_CONFIGS[TINY_NAME] = json.loads(json.dumps(TINY_CFG))
        model = open_clip.create_model(TINY_NAME, pretrained=None)
        tokenizer = open_clip.get_tokenizer("ViT-B-16")
    else:
        from mudpt.backbone import load_open_clip
        from mudpt.config import BackboneConfig

        model, tokenizer, _ = load_open_clip(BackboneConfig(name=name, pretrained="random"))
    clip = PromptableCLIP(model.float().eval(), tokenizer, name=name)
    return clip.to(device)


# --------------------------------------------------------------------------- the bench
class Bench:
    def __init__(self, args, device, workdir: Path):
        import torch

        from mudpt.data.coop import ImageReader
        from mudpt.data.image_cache import DecodedImageCache
        from mudpt.engine import resolve_precision

        self.args = args
        self.device = device
        self.workdir = workdir
        self.rtol = args.rtol if args.rtol is not None else (1e-5 if device.type == "cpu" else 1e-4)
        fast_precision = args.fast_precision or resolve_precision("auto", device)
        self.modes = [Mode("fast", True, True, True, fast_precision),
                      Mode("reference", False, False, False, "fp32")]
        if args.compile:
            self.modes.append(Mode("compiled", True, True, True, fast_precision, compile=True))
        self.workers = args.workers if args.workers is not None else (0 if device.type == "cpu" else
                                                                      min(8, os.cpu_count() or 1))
        self.pin = device.type == "cuda"
        self.image_root = workdir / "images"
        self.reader = ImageReader("bench", self.image_root)
        # A disk layer too, so DataLoader workers (separate processes) share what they decode.
        self.cache = DecodedImageCache(workdir / "decoded", memory_bytes=1 << 30)
        self.fill_seconds: dict[str, float] = {}
        self._files: list[Any] = []
        self.torch = torch

    # -- data
    def files(self, n: int):
        if len(self._files) < n:
            make_images = _load_image_helpers()
            root = self.workdir / f"images-{n}"
            self._files = make_images(root, n, tuple(self.args.image_wh))
            self.image_root = root
            from mudpt.data.coop import ImageReader

            self.reader = ImageReader("bench", root)
        return self._files[:n]

    def items(self, n: int, names: Sequence[str], offset: int = 0):
        from mudpt.data.base import Datum

        files = self.files(offset + n)[offset: offset + n]
        return [Datum(f.impath, i % len(names), names[i % len(names)]) for i, f in enumerate(files)]

    def loader(self, items, size: int, train: bool, batch: int, mode: Mode):
        from mudpt.data.loader import make_loader

        return make_loader(items, self.reader, size, train, batch, cache=self.cache if mode.image_cache else None,
                           seed=0, num_workers=self.workers, pin_memory=self.pin, source_id=str(self.image_root))

    def fill_cache(self, loader, kind: str, size: int) -> None:
        """One pass that decodes into the cache (few-shot training pays it in its first epoch only);
        its time is reported once per image set, not charged to the steady-state step."""
        key = f"{kind} {size}px {self.image_root.name}"
        if key in self.fill_seconds:
            return
        t = time.perf_counter()
        for _ in loader:
            pass
        self.fill_seconds[key] = time.perf_counter() - t

    # -- one backbone
    def run_backbone(self, plan: Plan) -> list[Row]:
        from mudpt.method import build_method

        torch = self.torch
        threads = torch.get_num_threads()
        if self.args.threads is None and plan.backbone in TINY_BACKBONES:
            torch.set_num_threads(1)
        try:
            return self._run_backbone(plan, build_method)
        finally:
            torch.set_num_threads(threads)

    def _run_backbone(self, plan: Plan, build_method) -> list[Row]:
        torch = self.torch
        clip = load_backbone(plan.backbone, self.device)
        rows: list[Row] = []
        n_train = plan.batch * plan.iters
        n_eval = plan.eval_batch * plan.eval_batches
        self.files(n_train + n_eval)
        self.warm_up(clip, plan)
        for name in plan.methods:
            for classes in sorted(set(plan.train_classes) | set(plan.eval_classes)):
                torch.manual_seed(0)
                method = build_method(name, clip, {}).to(self.device)
                # prompt_state() aliases the live parameters on CPU (.cpu() does not copy): clone.
                init = {k: v.clone() for k, v in method.prompt_state().items()}
                names = class_names(classes)
                texts = method.class_texts(names, "a photo of a {}.")
                train_items = self.items(n_train, names)
                eval_items = self.items(n_eval, names, offset=n_train)
                results: dict[str, ModeResult] = {}
                for mode in self.modes:
                    clip.trim_text = mode.trim_text
                    text = clip.tokenize(texts)
                    res = ModeResult(mode.name, int(text.ids.shape[1]))
                    m = method
                    if mode.compile:
                        m = build_method(name, clip, {}).to(self.device)
                        m.compile()
                    if classes in plan.train_classes and method.trains:
                        m.load_prompt_state(init)
                        self.measure_train(m, clip, text, train_items, plan, mode, res, init)
                    if classes in plan.eval_classes and (classes <= 100 or plan.large_eval_methods is None
                                                         or name in plan.large_eval_methods):
                        m.load_prompt_state(init)
                        self.measure_eval(m, clip, text, eval_items, plan, mode, res)
                    results[mode.name] = res
                method.load_prompt_state(init)
                check = self.check(method, clip, texts, eval_items[: plan.check_images],
                                   grads=classes in plan.grad_check_classes, results=results,
                                   max_classes=plan.check_classes)
                row = Row(plan.backbone, name, classes, results, check)
                rows.append(row)
                self.progress(row)
        clip.trim_text = True
        return rows

    def warm_up(self, clip, plan: Plan) -> None:
        """Untimed: one train step and one evaluation batch on this backbone, so whichever mode is
        measured first does not pay the process's first-call costs (allocator growth, kernel setup)."""
        from mudpt.config import Recipe
        from mudpt.engine import predict, train
        from mudpt.method import build_method

        torch = self.torch
        method = build_method(plan.methods[0], clip, {}).to(self.device)
        text = clip.tokenize(method.class_texts(class_names(2), "a photo of a {}."))
        g = torch.Generator().manual_seed(0)
        batch = [(torch.randn(plan.batch, 3, clip.image_size, clip.image_size, generator=g),
                  torch.arange(plan.batch) % 2)]
        precision = self.modes[0].precision
        train(method, text, batch, Recipe(lr=1e-3, epochs=1, warmup_epochs=0), self.device, precision)
        predict(method, text, batch, self.device, precision)

    def measure_train(self, method, clip, text, items, plan: Plan, mode: Mode, res: ModeResult, init) -> None:
        """Best of `plan.repeats` timed epochs, each from the same prompts and the same batches."""
        from mudpt.config import Recipe
        from mudpt.engine import train

        if mode.image_cache:  # a loader of its own, so the timed loader's random draws match every mode's
            self.fill_cache(self.loader(items, clip.image_size, True, plan.batch, mode), "train", clip.image_size)
        recipe = Recipe(lr=method.default_recipe(16, "imagenet").lr, batch_size=plan.batch, epochs=1,
                        warmup_epochs=0)
        for repeat in range(plan.repeats):
            method.load_prompt_state(init)
            loader = self.loader(items, clip.image_size, True, plan.batch, mode)
            losses = []
            if plan.warmup:  # first-call costs (and torch.compile's tracing) stay out of the timed epoch
                first: list = []
                while len(first) < plan.warmup:  # a partial epoch (or more) of the same loader
                    for batch in loader:
                        first.append(batch)
                        if len(first) == plan.warmup:
                            break
                t = time.perf_counter()
                losses.append(train(method, text, first, recipe, self.device, mode.precision)[0].loss)
                if mode.compile and repeat == 0:
                    res.compile_warmup_s = time.perf_counter() - t
            with PeakMemory(self.device) as mem:
                cpu = time.process_time()
                hist = train(method, text, loader, recipe, self.device, mode.precision)
                cpu = time.process_time() - cpu
            losses.append(hist[0].loss)
            if repeat == 0:
                res.train_losses = losses
            step, cpu_step = hist[0].seconds / len(loader), cpu / len(loader)
            res.train_step_s = step if res.train_step_s is None else min(res.train_step_s, step)
            res.train_step_cpu_s = cpu_step if res.train_step_cpu_s is None else min(res.train_step_cpu_s, cpu_step)
            res.train_peak_mib = max(res.train_peak_mib or 0.0, mem.mib)

    def measure_eval(self, method, clip, text, items, plan: Plan, mode: Mode, res: ModeResult) -> None:
        from mudpt.engine import predict

        loader = self.loader(items, clip.image_size, False, plan.eval_batch, mode)
        if mode.image_cache:
            self.fill_cache(loader, "test", clip.image_size)
        if plan.warmup:
            first = next(iter(loader))
            t = time.perf_counter()
            predict(method, text, [first], self.device, mode.precision, mode.cache_text)
            if mode.compile:
                res.compile_warmup_s = (res.compile_warmup_s or 0.0) + time.perf_counter() - t
        for _ in range(plan.eval_repeats):  # best of the repeats
            with PeakMemory(self.device) as mem:
                cpu = time.process_time()
                pred, _true, seconds = predict(method, text, loader, self.device, mode.precision, mode.cache_text)
                cpu = time.process_time() - cpu
            if res.eval_seconds is None or seconds < res.eval_seconds:
                res.eval_seconds, res.eval_images_per_s = seconds, len(pred) / seconds
            res.eval_cpu_s = cpu if res.eval_cpu_s is None else min(res.eval_cpu_s, cpu)
            res.eval_peak_mib = max(res.eval_peak_mib or 0.0, mem.mib)
        res.eval_preds = [int(p) for p in pred]

    def check(self, method, clip, texts, items, grads: bool, results: dict[str, ModeResult],
              max_classes: int | None) -> Check:
        """fp32 on the same images: trimmed vs full context, cached vs per-batch text features.

        Each prompt's feature depends on that prompt alone, so with `max_classes` the check runs on a
        subset of the tokenised class set (kept at the full set's trimmed length, the longest prompt
        always included): the same comparison at a fraction of the reference cost."""
        import torch.nn.functional as F

        from mudpt.promptable import TextBatch

        torch = self.torch
        images = torch.stack([self._test_image(d.impath, clip.image_size) for d in items]).to(self.device)
        clip.trim_text = True
        longest = int(clip.tokenize(texts).eot.argmax())
        keep = sorted({d.label for d in items} | {longest})
        if max_classes is not None and max_classes < len(texts):
            spread = torch.linspace(0, len(texts) - 1, max(0, max_classes - len(keep))).round().long().tolist()
            keep = sorted(set(keep) | set(spread))
        else:
            keep = list(range(len(texts)))
        index = torch.tensor(keep, device=self.device)
        labels = torch.tensor([keep.index(d.label) for d in items], device=self.device)
        params = method.trainable_parameters()
        out = {}
        for trim in (True, False):
            clip.trim_text = trim
            full = clip.tokenize(texts)
            text = TextBatch(full.ids[index], full.eot[index], full.embeds[index])
            with torch.set_grad_enabled(grads and bool(params)):
                logits = method(images, text)
                loss = F.cross_entropy(logits, labels)
                g = torch.autograd.grad(loss, params) if grads and params else None
            with torch.no_grad():
                cached = None if method.image_conditioned else method.text_features(text)
                eval_logits = method(images, text, cached)
            out[trim] = (logits.detach(), loss.detach(), g, eval_logits)
        clip.trim_text = True
        (lf, sf, gf, ef), (lr_, sr, gr, _er) = out[True], out[False]
        grad_rel = max(rel_diff(a, b) for a, b in zip(gf, gr)) if gf else None
        c = Check(rel_diff(lf, lr_), rel_diff(ef, lr_), rel_diff(sf, sr), grad_rel, None, None, self.rtol)
        fast, ref = results.get("fast"), results.get("reference")
        exact_modes = fast is not None and ref is not None and fast.train_losses and ref.train_losses
        if exact_modes:
            c.train_loss_rel = max(rel_diff(torch.tensor(a), torch.tensor(b))
                                   for a, b in zip(fast.train_losses, ref.train_losses))
        if fast is not None and ref is not None and fast.eval_preds:
            agree = sum(a == b for a, b in zip(fast.eval_preds, ref.eval_preds))
            c.eval_pred_agreement = agree / len(ref.eval_preds)
        # Gradients get 10x the tolerance: backpropagation through every block amplifies the last-bit
        # differences of the (differently sized) matrix products, and the comparison is per tensor.
        checks = [("train-path logits", c.logits_train_rel, self.rtol),
                  ("cached-text evaluation logits", c.logits_eval_rel, self.rtol),
                  ("loss", c.loss_rel, self.rtol), ("loss gradients", c.grad_rel, 10 * self.rtol)]
        # Autocast (GPU) changes the numbers by design; the timed runs' losses are compared only in fp32.
        fast_mode = next(m for m in self.modes if m.name == "fast")
        if fast_mode.precision == "fp32":
            checks.append(("mean training losses of the timed runs", c.train_loss_rel, self.rtol))
        compiled = results.get("compiled")
        if compiled is not None and compiled.train_losses and fast is not None and fast.train_losses:
            c.compiled_train_loss_rel = max(rel_diff(torch.tensor(a), torch.tensor(b))
                                            for a, b in zip(compiled.train_losses, fast.train_losses))
            checks.append(("torch.compile vs eager training losses", c.compiled_train_loss_rel, self.rtol))
        for what, value, tol in checks:
            if value is not None and not value <= tol:
                c.failures.append(f"{what}: relative difference {value:.3g} > {tol:g}")
        return c

    def _test_image(self, impath: str, size: int):
        from mudpt.data.transforms import test_geometry, to_normalized_tensor

        return to_normalized_tensor()(test_geometry(size)(self.reader(impath)))

    def progress(self, row: Row) -> None:
        f, r = row.modes["fast"], row.modes["reference"]
        parts = [f"{row.backbone} {row.method} C={row.classes}: L {f.text_len}/{r.text_len}"]
        if f.train_step_s is not None:
            parts.append(f"train {f.train_step_s:.3f}s vs {r.train_step_s:.3f}s x{row.ratio('train_step_s'):.2f}")
        if f.eval_images_per_s is not None:
            parts.append(f"eval {f.eval_images_per_s:.1f} vs {r.eval_images_per_s:.1f} img/s "
                         f"x{row.ratio('eval_images_per_s', higher_is_better=True):.2f}")
        parts.append("ok" if row.check.passed else "MISMATCH: " + "; ".join(row.check.failures))
        print(" | ".join(parts), file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- plans
TINY_BACKBONES = ("tiny", "mudpt-tiny")


def make_plans(args, device) -> list[Plan]:
    """Per-backbone sizes. Explicit flags always win; the defaults keep a CPU-only run near 10 minutes."""
    plans = []
    cpu = device.type == "cpu"
    for bb in args.backbones:
        small = bb in TINY_BACKBONES
        classes = list(args.classes or DEFAULT_CLASSES)
        methods = list(args.methods or DEFAULT_METHODS)
        notes: list[str] = []
        if args.quick:
            p = Plan(bb, classes, classes, methods, iters=2, warmup=1, batch=4, eval_batch=16,
                     eval_batches=2, check_images=4, grad_check_classes=classes)
        elif small:
            p = Plan(bb, classes, classes, methods, iters=4, warmup=1, batch=4, eval_batch=100,
                     eval_batches=3, check_images=8, grad_check_classes=classes, repeats=2, eval_repeats=2)
        elif not cpu:
            p = Plan(bb, classes, classes, methods, iters=20, warmup=3, batch=4, eval_batch=100,
                     eval_batches=10, check_images=8, grad_check_classes=classes, repeats=3, eval_repeats=3)
        else:
            # 2 CPU cores, ViT-B/16: fwd+bwd of 4 images takes seconds, text fwd+bwd of 100 classes at
            # 77 tokens ~10 s, a forward per image ~0.2 s: the reference mode at 1000 classes would
            # take minutes per train step, and evaluating 100-image batches for every cell, hours.
            if args.methods is None:
                methods = [m for m in methods if m in ("mudpt", "maple", "coop")]
            p = Plan(bb, [c for c in classes if c <= 100], [c for c in classes if c >= 100] or classes, methods,
                     iters=1, warmup=0, batch=4, eval_batch=50, eval_batches=2, check_images=2,
                     grad_check_classes=[c for c in classes if c <= 10], check_classes=100,
                     large_eval_methods=methods[:1], repeats=2, eval_repeats=1)
        for attr in ("iters", "warmup", "eval_batches", "check_images", "check_classes", "repeats", "eval_repeats"):
            if getattr(args, attr) is not None:
                setattr(p, attr, getattr(args, attr))
        if args.batch_size is not None:
            p.batch = args.batch_size
        if args.eval_batch_size is not None:
            p.eval_batch = args.eval_batch_size
        if args.train_classes is not None:
            p.train_classes = list(args.train_classes)
        if args.eval_classes is not None:
            p.eval_classes = list(args.eval_classes)
        p.grad_check_classes = [c for c in p.grad_check_classes if c in p.train_classes]
        if args.compile and p.warmup < 1:
            p.warmup = 1
            notes.append("--compile: one warm-up step/batch added so tracing stays out of the timings")
        if not small and cpu:
            notes.append(
                f"{bb} on CPU (reduced so the run stays near 10 minutes): methods {','.join(p.methods)}; "
                f"{p.iters} timed train step(s) after {p.warmup} warm-up step(s), best of {p.repeats} (evaluation: "
                f"{p.eval_repeats}) timed run(s) (other jobs on the machine add noise), train timed at "
                f"{p.train_classes} classes; evaluation timed at {p.eval_classes} classes ("
                f"above 100 for {','.join(p.large_eval_methods or p.methods)} only) over "
                f"{p.eval_batch * p.eval_batches} images in batches of {p.eval_batch} (official configs: 100, so "
                f"the reference re-encodes the prompts {100 / p.eval_batch:g}x as often per image as there); "
                f"gradients checked at {p.grad_check_classes or 'no'} classes, logits and losses at every class count "
                f"(on at most {p.check_classes} classes of each set, the longest prompt included)")
        if p.eval_batches < 2:
            notes.append("a single evaluation batch: cached and per-batch text features then cost the same")
        p.notes = notes
        plans.append(p)
    return plans


# --------------------------------------------------------------------------- output
def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _x(x: float | None) -> str:
    return "-" if x is None else f"x{x:.2f}"


HEADER = ["backbone", "method", "C", "L fast/ref", "train s/step fast", "ref", "speed-up",
          "eval img/s fast", "ref", "speed-up", "train peak MiB fast/ref", "eval peak MiB fast/ref",
          "max rel diff", "check"]


def table_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        f, ref = r.modes["fast"], r.modes["reference"]
        c = r.check
        diffs = [d for d in (c.logits_train_rel, c.logits_eval_rel, c.loss_rel, c.grad_rel, c.train_loss_rel,
                             c.compiled_train_loss_rel)
                 if d is not None]
        out.append([r.backbone, r.method, str(r.classes), f"{f.text_len}/{ref.text_len}",
                    _fmt(f.train_step_s, ".3f"), _fmt(ref.train_step_s, ".3f"), _x(r.ratio("train_step_s")),
                    _fmt(f.eval_images_per_s, ".1f"), _fmt(ref.eval_images_per_s, ".1f"),
                    _x(r.ratio("eval_images_per_s", higher_is_better=True)),
                    f"{_fmt(f.train_peak_mib, '.0f')}/{_fmt(ref.train_peak_mib, '.0f')}",
                    f"{_fmt(f.eval_peak_mib, '.0f')}/{_fmt(ref.eval_peak_mib, '.0f')}",
                    f"{max(diffs):.1e}" if diffs else "-", "ok" if c.passed else "FAIL"])
    return out


def compiled_rows(rows: list[Row]) -> list[list[str]]:
    out = []
    for r in rows:
        if "compiled" not in r.modes:
            continue
        cm, f = r.modes["compiled"], r.modes["fast"]
        out.append([r.backbone, r.method, str(r.classes), _fmt(cm.train_step_s, ".3f"),
                    _x(r.ratio("train_step_s", "compiled", "fast")), _fmt(cm.eval_images_per_s, ".1f"),
                    _x(r.ratio("eval_images_per_s", "compiled", "fast", higher_is_better=True)),
                    _fmt(cm.compile_warmup_s, ".1f")])
    return out


COMPILED_HEADER = ["backbone", "method", "C", "compiled s/step", "vs fast", "compiled img/s", "vs fast",
                   "warm-up incl. compile s"]


def print_tables(rows: list[Row], meta: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    t = Table(title=f"fast paths vs reference cost ({meta['device']}, fast precision {meta['fast_precision']})")
    for h in HEADER:
        t.add_column(h, justify="left" if h in ("backbone", "method", "check") else "right")
    for cells in table_rows(rows):
        style = None if cells[-1] == "ok" else "bold red"
        t.add_row(*cells, style=style)
    console.print(t)
    comp = compiled_rows(rows)
    if comp:
        ct = Table(title="torch.compile (fast mode + compile) vs fast mode")
        for h in COMPILED_HEADER:
            ct.add_column(h, justify="right")
        for cells in comp:
            ct.add_row(*cells)
        console.print(ct)
    for note in meta["notes"]:
        console.print(f"[dim]note:[/dim] {note}")


def markdown(rows: list[Row], meta: dict) -> str:
    def md_table(header, body):
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)

    parts = [f"Date: {meta['date']}  ", f"Machine: {meta['machine']}  ", f"Command: `{meta['command']}`", "",
             md_table(HEADER, table_rows(rows))]
    comp = compiled_rows(rows)
    if comp:
        parts += ["", md_table(COMPILED_HEADER, comp)]
    if meta["notes"]:
        parts += [""] + [f"- {n}" for n in meta["notes"]]
    return "\n".join(parts) + "\n"


def machine_description(device, threads: int | None) -> str:
    import torch

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores"
    cpu_name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu_name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{os.cpu_count()} CPU cores ({cpu_name}), no GPU, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads (tiny backbones: {threads if threads is not None else 1})")


# --------------------------------------------------------------------------- profile
def profile_step(args, device, out: Path) -> None:
    """torch.profiler over one train step (after one untimed step) in each mode, text and vision
    towers labelled; tables go to stdout and out/profile-*.txt, traces to out/profile-*.json."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from mudpt.config import Recipe
    from mudpt.engine import resolve_precision, train
    from mudpt.method import build_method

    bb, name, classes = args.backbones[0], (args.methods or ["mudpt"])[0], (args.classes or [100])[0]
    clip = load_backbone(bb, device)
    torch.manual_seed(0)
    method = build_method(name, clip, {}).to(device)
    for attr in ("text_features", "image_features"):
        inner = getattr(method, attr)

        def labelled(*a, _inner=inner, _label=f"## {attr}", **k):
            with record_function(_label):
                return _inner(*a, **k)

        setattr(method, attr, labelled)
    texts = method.class_texts(class_names(classes), "a photo of a {}.")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch_size or 4, 3, clip.image_size, clip.image_size, generator=g)
    labels = torch.arange(images.shape[0]) % classes
    batch = [(images, labels)]
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    for mode, trim, precision in (("fast", True, args.fast_precision or resolve_precision("auto", device)),
                                  ("reference", False, "fp32")):
        clip.trim_text = trim
        text = clip.tokenize(texts)
        recipe = Recipe(lr=0.002, batch_size=images.shape[0], epochs=1, warmup_epochs=0)
        train(method, text, batch, recipe, device, precision)  # untimed: first-call costs
        with profile(activities=activities, record_shapes=True) as prof:
            t = time.perf_counter()
            train(method, text, batch, recipe, device, precision)
            wall = time.perf_counter() - t
        by_op = prof.key_averages().table(sort_by=sort, row_limit=20)
        by_shape = prof.key_averages(group_by_input_shape=True).table(sort_by=sort, row_limit=12)
        head = (f"# {bb} {name} C={classes} mode={mode} (L={text.ids.shape[1]}, precision {precision}), "
                f"one train step of batch {images.shape[0]}: {wall:.2f} s under the profiler\n")
        report = head + by_op + "\n" + by_shape
        print(report)
        (out / f"profile-{mode}.txt").write_text(report)
        prof.export_chrome_trace(str(out / f"profile-{mode}.json"))
    clip.trim_text = True


# --------------------------------------------------------------------------- main
def _csv(kind):
    def parse(s: str):
        items = [x.strip() for x in s.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("expected a comma-separated list")
        try:
            return [kind(x) for x in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{s!r}: expected a comma-separated list of {kind.__name__}") from None
    return parse


def parse_args(argv: Sequence[str] | None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny backbone, 10/100 classes, 2 steps (CI)")
    ap.add_argument("--backbones", type=_csv(str), help=f"default {','.join(DEFAULT_BACKBONES)}; "
                    f"'tiny' is the test config, other names are open_clip architectures with random weights")
    ap.add_argument("--classes", type=_csv(int), help="class counts, default 10,100,1000 (--quick: 10,100)")
    ap.add_argument("--train-classes", type=_csv(int), help="class counts whose train step is timed "
                    "(default: all; ViT on CPU: those <= 100)")
    ap.add_argument("--eval-classes", type=_csv(int), help="class counts whose evaluation is timed "
                    "(default: all; ViT on CPU: those >= 100)")
    ap.add_argument("--methods", type=_csv(str), help=f"default {','.join(DEFAULT_METHODS)}")
    ap.add_argument("--iters", type=int, help="timed train steps per cell")
    ap.add_argument("--warmup", type=int, help="untimed train steps / eval batches before timing")
    ap.add_argument("--repeats", type=int, help="timed train runs per measurement, best reported (default: "
                    "GPU 3, tiny and ViT on CPU 2, --quick 1)")
    ap.add_argument("--eval-repeats", type=int, help="timed evaluations per measurement, best reported "
                    "(default: GPU 3, tiny 2, --quick and ViT on CPU 1)")
    ap.add_argument("--batch-size", type=int, help="train batch (default 4, the MuDPT/MaPLe recipe)")
    ap.add_argument("--eval-batch-size", type=int, help="evaluation batch (default 100 as in the official "
                    "configs; ViT on CPU 50)")
    ap.add_argument("--eval-batches", type=int, help="evaluation batches per measurement")
    ap.add_argument("--check-images", type=int, help="images in the fp32 equivalence check")
    ap.add_argument("--check-classes", type=int, help="classes in the equivalence check (default: all; "
                    "ViT on CPU: 100, a spread subset that always holds the longest prompt)")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--fast-precision", choices=("fp32", "bf16", "fp16"),
                    help="fast mode precision (default: bf16 autocast on GPU, fp16 where bf16 is missing; CPU fp32)")
    ap.add_argument("--workers", type=int, help="DataLoader workers in both modes (default: 0 on CPU, "
                    "min(8, cores) on GPU)")
    ap.add_argument("--threads", type=int, help="torch CPU threads for every backbone (default: torch's, "
                    "but 1 for the tiny backbones: their ops are too small to gain from a second thread, and on "
                    "a busy machine the thread hand-off makes them up to 50x slower)")
    ap.add_argument("--compile", action="store_true", help="also measure fast mode + torch.compile")
    ap.add_argument("--rtol", type=float, help="equivalence tolerance (default 1e-5 CPU, 1e-4 GPU fp32 checks)")
    ap.add_argument("--image-wh", type=_csv(int), default=[500, 375], help="size of the generated JPEGs")
    ap.add_argument("--profile", action="store_true", help="profile one train step of the first "
                    "backbone/method/class count in both modes instead of benchmarking")
    ap.add_argument("--out", type=Path, default=Path("mudpt-results/benchmarks"), help="folder for the results")
    args = ap.parse_args(argv)
    if args.quick:
        args.backbones = args.backbones or ["tiny"]
        args.classes = args.classes or [10, 100]
        args.image_wh = [160, 120] if args.image_wh == [500, 375] else args.image_wh
    args.backbones = args.backbones or list(DEFAULT_BACKBONES)
    for what, values in (("--classes", args.classes or [1]), ("--train-classes", args.train_classes or [1]),
                         ("--eval-classes", args.eval_classes or [1])):
        if min(values) < 1:
            raise BenchError(f"{what}: class counts must be >= 1, got {values}")
    for what in ("iters", "eval_batches", "check_images", "check_classes", "repeats", "eval_repeats", "batch_size",
                 "eval_batch_size"):
        v = getattr(args, what)
        if v is not None and v < 1:
            raise BenchError(f"--{what.replace('_', '-')} must be >= 1, got {v}")
    if args.warmup is not None and args.warmup < 0:
        raise BenchError(f"--warmup must be >= 0, got {args.warmup}")
    if len(args.image_wh) != 2 or min(args.image_wh) < 16:
        raise BenchError(f"--image-wh must be W,H (each >= 16), got {args.image_wh}")
    return args


def resolve_device(spec: str):
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise BenchError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {spec}: no CUDA device is available here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device {spec}: only cpu and cuda are supported")
    return device


def check_methods(names: Sequence[str]) -> None:
    from mudpt.method import get_method

    for n in names:
        cls = get_method(n)  # raises MethodError naming the valid ones
        if cls.image_conditioned:
            raise BenchError(f"method {n!r} conditions its text on each image, so it has no per-evaluation "
                             f"text cache to measure; leave it out of --methods")
        if not cls.trains:
            raise BenchError(f"method {n!r} has nothing to train; leave it out of --methods")


def run(argv: Sequence[str] | None = None) -> tuple[int, list[Row], dict]:
    args = parse_args(argv)
    import mudpt.compat  # noqa: F401
    import torch

    device = resolve_device(args.device)
    if args.threads is not None:
        if args.threads < 1:
            raise BenchError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    check_methods(args.methods or DEFAULT_METHODS)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.profile:
        profile_step(args, device, args.out)
        return 0, [], {}
    plans = make_plans(args, device)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="bench-fast-paths-") as tmp:
        bench = Bench(args, device, Path(tmp))
        n_files = max(p.batch * p.iters + p.eval_batch * p.eval_batches for p in plans)
        bench.files(n_files)
        t0 = time.perf_counter()
        for plan in plans:
            rows += bench.run_backbone(plan)
        total = time.perf_counter() - t0
        fast_precision = bench.modes[0].precision
        fills = dict(bench.fill_seconds)
        workers = bench.workers
    notes = [n for p in plans for n in p.notes]
    notes.append(f"train batch {plans[0].batch} for every method; reference mode: fp32, full text context, "
                 f"text re-encoded per evaluation batch, JPEGs decoded every time; fast mode: trimmed context, "
                 f"text once per evaluation, warm decoded-image cache, {fast_precision}; DataLoader workers "
                 f"{workers}; generated JPEGs {args.image_wh[0]}x{args.image_wh[1]}")
    notes.append("one-time cache fill (decode) per image set, not in the step times: "
                 + ", ".join(f"{k} {v:.2f} s" for k, v in fills.items()))
    notes.append("peak memory: working memory above the loaded model; "
                 + ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
                    "CPU resident-set growth sampled every 2 ms after malloc_trim (includes allocator slack)"))
    rtol = rows[0].check.rtol if rows else args.rtol
    notes.append(f"equivalence in fp32, max|fast-ref|/max|ref| per tensor: <= {rtol:g} for logits (train path and "
                 f"cached-text evaluation), loss and the timed runs' mean losses; <= {10 * rtol:g} for gradients")
    notes.append(f"total benchmark time {total:.0f} s")
    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_description(device, args.threads),
        "device": str(device),
        "fast_precision": fast_precision,
        "command": " ".join(["python benchmarks/bench_fast_paths.py",
                             shlex.join(argv if argv is not None else sys.argv[1:])]).strip(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "plans": [asdict(p) for p in plans],
        "cache_fill_seconds": fills,
        "notes": notes,
    }
    failures = [f"{r.backbone} {r.method} C={r.classes}: {f}" for r in rows for f in r.check.failures]
    payload = {"meta": meta, "rows": [_row_json(r) for r in rows], "failures": failures}
    (args.out / "fast_paths.json").write_text(json.dumps(payload, indent=2))
    (args.out / "fast_paths.md").write_text(markdown(rows, meta))
    print_tables(rows, meta)
    print(f"wrote {args.out / 'fast_paths.json'} and {args.out / 'fast_paths.md'}")
    if failures:
        print("EQUIVALENCE FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1, rows, payload
    return 0, rows, payload


def _row_json(r: Row) -> dict:
    d = {"backbone": r.backbone, "method": r.method, "classes": r.classes,
         "modes": {k: {kk: vv for kk, vv in asdict(v).items() if kk != "eval_preds"} for k, v in r.modes.items()},
         "check": {**asdict(r.check), "passed": r.check.passed},
         "train_speedup": r.ratio("train_step_s"),
         "eval_speedup": r.ratio("eval_images_per_s", higher_is_better=True),
         "train_cpu_time_speedup": r.ratio("train_step_cpu_s"),
         "eval_cpu_time_speedup": r.ratio("eval_cpu_s")}
    return d


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(argv)[0]
    except UserError as e:  # bad flags, unknown method or backbone: the message says what to pass
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
