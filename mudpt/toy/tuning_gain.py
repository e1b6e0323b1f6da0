"""Does prompt tuning have room to work on the embedded suite? 16-shot MuDPT vs zero-shot CLIP on the
base classes of every few-shot dataset (the base half of the base-to-new protocol), through the same
engine and recipe as every grid."""
from __future__ import annotations

from dataclasses import dataclass

REQUIRED_MEAN_GAIN = 5.0  # points of base accuracy, averaged over the suite


@dataclass(frozen=True)
class GainRow:
    dataset: str
    zero_shot: float
    tuned: float

    @property
    def gain(self) -> float:
        return self.tuned - self.zero_shot


def gain_table(method: str = "mudpt", shots: int = 16, seed: int = 1, datasets: list[str] | None = None,
               recipe: dict | None = None) -> list[GainRow]:
    from mudpt.api import run_experiment
    from mudpt.config import RunConfig

    from .datasets import EMBEDDED_SUITE

    rows = []
    for ds in datasets or EMBEDDED_SUITE:
        def base_acc(m: str, rec: dict | None = None) -> float:
            cfg = RunConfig.make(m, ds, recipe=rec, protocol="base2new", shots=shots, seed=seed)
            return run_experiment(cfg).metrics["base_acc"]

        rows.append(GainRow(ds, base_acc("zsclip"), base_acc(method, recipe)))
    return rows


def mean_gain(rows: list[GainRow]) -> float:
    return sum(r.gain for r in rows) / len(rows)


def markdown(rows: list[GainRow], method: str = "mudpt") -> str:
    lines = [f"| dataset (base classes) | zero-shot % | 16-shot {method} % | gain |", "|---|---:|---:|---:|"]
    lines += [f"| {r.dataset} | {r.zero_shot:.1f} | {r.tuned:.1f} | {r.gain:+.1f} |" for r in rows]
    lines.append(f"| **mean** | {sum(r.zero_shot for r in rows) / len(rows):.1f} | "
                 f"{sum(r.tuned for r in rows) / len(rows):.1f} | **{mean_gain(rows):+.1f}** |")
    return "\n".join(lines)
