"""What training shows while it runs (rank 0 only), and where.

* On a terminal: a tqdm bar per epoch (``seed 1111 epoch 3/20``, batches, running loss, rate) on stderr.
* Off a terminal (a cluster job's log): a plain line every ``every_s`` seconds within an epoch
  (``seed 1111 epoch 3/20 batch 120/161 loss 0.8123 (41 s)``), so a long epoch is never silent.
* Always: a header (run directory, device, parameters, data sizes, epoch cap, early stop), one line per
  epoch (``epoch k/N``, losses, seconds per epoch, ETA) and why each seed stopped (no validation improvement
  for ``early_stop`` epochs, or the epoch cap reached -- saying whether it was still improving).
* Every line shown is also appended to ``RUN_DIR/train.log`` (even with ``--quiet``, which only silences the
  console).
* ``tensorboard=True``: per-epoch scalars (train loss, every validation metric, learning rate, seconds) in
  ``RUN_DIR/tensorboard/seed-<seed>/`` through ``torch.utils.tensorboard`` (needs the tensorboard package).

A seed's ETA is an upper bound: training ends at the latest after ``early_stop`` epochs without improvement
(or at the cap), at the mean epoch time so far.  With seeds still to come, the epoch line adds an estimate for
the whole run (each later seed taking as long as the finished ones took on average).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gsit.errors import ConfigError


def fmt_seconds(s: float) -> str:
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.1f}s"
    m, s = divmod(int(round(s)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def stop_reason(*, epoch: int, best_epoch: int, early_stop: int, max_epochs: int) -> str:
    """Why a seed's training loop ended after ``epoch``."""
    since = epoch - best_epoch
    if since >= early_stop:
        return (
            f"early stop after epoch {epoch}: no validation improvement for {since} epochs "
            f"(best epoch {best_epoch})"
        )
    if best_epoch == epoch:
        return (
            f"epoch cap reached (train.max_epochs={max_epochs}) while still improving: the last epoch "
            f"was the best; more epochs may help"
        )
    return (
        f"epoch cap reached (train.max_epochs={max_epochs}); best epoch {best_epoch}, {since} epoch(s) "
        f"without improvement (early stop needs {early_stop})"
    )


class Progress:
    """Console, log file and TensorBoard output of one training run (see the module docstring)."""

    def __init__(
        self,
        quiet: bool,
        ctx,
        *,
        log_path: Path | None = None,
        every_s: float = 30.0,
        tensorboard_dir: Path | None = None,
        tty: bool | None = None,
        bar_interval: float = 0.1,
    ) -> None:
        self.main = ctx.main
        self.quiet = quiet or not ctx.main
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.every_s = float(every_s)
        self.bar_interval = float(bar_interval)  # tqdm's mininterval: the least time between redraws
        self.log_path = Path(log_path) if (log_path is not None and ctx.main) else None
        self.tb_dir = Path(tensorboard_dir) if (tensorboard_dir is not None and ctx.main) else None
        self._writers: dict[int, Any] = {}
        self._params_shown = False
        self._epoch_seconds: dict[int, list[float]] = {}
        self._seed_started = time.monotonic()
        self._seeds_after = 0  # seeds still to train after the current one
        self._seed_durations: list[float] = []
        if self.tb_dir is not None:
            require_tensorboard()

    # ---------------------------------------------------------------- output
    def line(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)
        if self.log_path is not None:
            with open(self.log_path, "a", encoding="utf-8") as fh:
                fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")

    # ---------------------------------------------------------------- run and seed
    def header(self, run, run_dir: Path, data, device) -> None:
        t = run.train
        sizes = ", ".join(f"{k} {len(v)}" for k, v in data.splits.items())
        cap = f"{t.max_epochs}" if t.max_epochs > 0 else "none (early stop only, as the paper)"
        self.line(f"run directory: {run_dir}")
        self.line(
            f"{run.model_name} on {run.data.dataset}: device {device}, seeds {list(t.seeds)}, "
            f"data {sizes} ({data.task})"
        )
        self.line(
            f"epoch cap: {cap}; early stop after {t.early_stop} epochs without a validation-loss "
            f"improvement; batch size {t.batch_size}"
        )

    def seed_start(self, run, seed: int, mine: list[int] | None = None) -> None:
        """A seed starts; ``mine``: the seeds this process trains, in order (default: all of the run's)."""
        seeds = list(run.train.seeds)
        i = seeds.index(seed)
        mine = seeds if mine is None else list(mine)
        self._seed_started = time.monotonic()
        self._seeds_after = len(mine) - mine.index(seed) - 1
        self.line(f"{run.model_name} on {run.data.dataset}: seed {seed} ({i + 1}/{len(seeds)})")

    def params(self, model) -> None:
        if self._params_shown:
            return
        self._params_shown = True
        total = sum(p.numel() for p in model.parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        self.line(f"parameters: {total:,} ({trainable:,} trainable)")

    # ---------------------------------------------------------------- within an epoch
    def batch(self, seed: int, epoch: int, max_epochs: int = 0) -> Callable[[int, int, float], None] | None:
        """A callback ``(batch i, of n, running loss)`` for :func:`gsit.train.train_epoch`, or None."""
        if self.quiet:
            return None
        label = f"seed {seed} epoch {epoch}" + (f"/{max_epochs}" if max_epochs > 0 else "")
        if self.tty:
            return self._tqdm(label)
        start = last = time.monotonic()

        def plain(i: int, n: int, loss: float) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= self.every_s and i < n:
                last = now
                self.line(f"  {label} batch {i}/{n} loss {loss:.4f} ({fmt_seconds(now - start)})")

        return plain

    def _tqdm(self, label: str):
        from tqdm import tqdm

        bar = None

        def show(i: int, n: int, loss: float) -> None:
            nonlocal bar
            if bar is None:
                bar = tqdm(
                    total=n,
                    desc=f"  {label}",
                    leave=False,
                    file=sys.stderr,
                    unit="batch",
                    dynamic_ncols=True,
                    mininterval=self.bar_interval,
                )
            bar.update(i - bar.n)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            if i >= n:
                bar.close()

        return show

    # ---------------------------------------------------------------- epoch end
    def epoch(
        self,
        *,
        seed: int,
        epoch: int,
        train_loss: float,
        valid: dict[str, float],
        improved: bool,
        seconds: float,
        best_epoch: int,
        early_stop: int,
        max_epochs: int,
        lr: float,
    ) -> None:
        times = self._epoch_seconds.setdefault(seed, [])
        times.append(seconds)
        per = sum(times) / len(times)
        left = early_stop - (epoch - best_epoch)
        if max_epochs > 0:
            left = min(left, max_epochs - epoch)
        total = f"/{max_epochs}" if max_epochs > 0 else ""
        seed_eta = max(left, 0) * per
        more = ""
        if self._seeds_after:
            # later seeds: the mean duration of finished seeds, else this seed's elapsed time plus its bound
            one = (
                sum(self._seed_durations) / len(self._seed_durations)
                if self._seed_durations
                else time.monotonic() - self._seed_started + seed_eta
            )
            more = f"; ~{fmt_seconds(seed_eta + self._seeds_after * one)} for the run"
        self.line(
            f"  seed {seed} epoch {epoch}{total}  train {train_loss:.4f}  "
            f"valid loss {valid['Loss']:.4f}"
            f"{'  *' if improved else '   '}  {seconds:.1f} s/epoch  "
            f"ETA <= {fmt_seconds(seed_eta)} ({max(left, 0)} epoch(s) at most){more}"
        )
        if self.tb_dir is not None:
            w = self._writer(seed)
            w.add_scalar("train/loss", train_loss, epoch)
            for k, v in valid.items():
                w.add_scalar(f"valid/{k}", v, epoch)
            w.add_scalar("train/lr", lr, epoch)
            w.add_scalar("train/seconds_per_epoch", seconds, epoch)
            w.flush()

    def stopped(self, *, seed: int, epoch: int, best_epoch: int, early_stop: int, max_epochs: int) -> None:
        self.line(
            f"  seed {seed}: "
            + stop_reason(epoch=epoch, best_epoch=best_epoch, early_stop=early_stop, max_epochs=max_epochs)
        )

    def test(self, seed: int, test: dict[str, float]) -> None:
        self._seed_durations.append(time.monotonic() - self._seed_started)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in list(test.items())[:4])
        self.line(f"  seed {seed} test (best epoch's weights): {shown}")
        if self.tb_dir is not None:
            w = self._writer(seed)
            for k, v in test.items():
                w.add_scalar(f"test/{k}", v, 0)
            w.close()
            self._writers.pop(seed, None)

    def _writer(self, seed: int):
        if seed not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[seed] = SummaryWriter(log_dir=str(self.tb_dir / f"seed-{seed}"))
        return self._writers[seed]


def require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError as e:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
