"""Calibrating the judge against the verifier on labeled prompts, as the run goes.

A small judge's decision point is not 0.5 (Qwen2.5-Coder-0.5B puts r ~ 0.3 on everything, right
or wrong), so r_judge is not P(correct). On labeled prompts the verifier says what is correct;
:class:`JudgeCalibrator` fits a monotone map r_judge -> P(correct) on those pairs:

- ``isotonic``: sklearn's IsotonicRegression (non-decreasing, clipped to [0, 1]);
- ``platt``: a logistic regression on logit(r_judge) (Platt scaling).

Only PAST steps are fitted: each step first scores its own labeled pairs with the current fit
(out-of-sample Brier scores, raw and calibrated, are logged), then optionally replaces r_judge
on UNLABELED prompts by the calibrated value, then adds its labeled pairs and refits. Until
``min_samples`` pairs of both classes exist the map is the identity. Gated rows (no final
answer, reward 0) and abstentions (NaN) are neither fitted nor transformed. The fit is not
saved in checkpoints: a resumed run refits from the steps after the resume.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["CALIBRATION_METHODS", "JudgeCalibrator"]

CALIBRATION_METHODS = ("none", "isotonic", "platt")


def _logit(r: np.ndarray) -> np.ndarray:
    r = np.clip(r, 1e-6, 1 - 1e-6)
    return np.log(r / (1 - r))


@dataclass
class JudgeCalibrator:
    method: str = "isotonic"
    min_samples: int = 32
    window: int = 4096  # most recent labeled pairs kept for the fit
    _r: list[float] = field(default_factory=list)
    _y: list[float] = field(default_factory=list)
    _model: object | None = None

    def __post_init__(self) -> None:
        if self.method not in CALIBRATION_METHODS[1:]:
            raise ValueError(f"calibration method must be one of {CALIBRATION_METHODS[1:]}, got {self.method!r}")

    @property
    def fitted(self) -> bool:
        return self._model is not None

    def transform(self, r: np.ndarray) -> np.ndarray:
        """P(correct) for judge rewards ``r`` (float32; NaN stays NaN; identity until fitted)."""
        r = np.asarray(r, dtype=np.float64)
        out = r.copy()
        ok = np.isfinite(r)
        if self._model is not None and ok.any():
            if self.method == "isotonic":
                out[ok] = self._model.predict(r[ok])  # type: ignore[attr-defined]
            else:
                out[ok] = self._model.predict_proba(_logit(r[ok])[:, None])[:, 1]  # type: ignore[attr-defined]
        return out.astype(np.float32)

    def update(self, r: np.ndarray, correct: np.ndarray) -> None:
        """Adds labeled pairs (finite r only) and refits once both classes have enough pairs."""
        r = np.asarray(r, dtype=np.float64)
        ok = np.isfinite(r)
        self._r = (self._r + r[ok].tolist())[-self.window :]
        self._y = (self._y + np.asarray(correct, dtype=np.float64)[ok].tolist())[-self.window :]
        y = np.asarray(self._y)
        if len(y) < self.min_samples or y.min() == y.max():
            return
        x = np.asarray(self._r)
        if self.method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            self._model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(x, y)
        else:
            from sklearn.linear_model import LogisticRegression

            self._model = LogisticRegression(C=1e4).fit(_logit(x)[:, None], y.astype(int))

    def state_dict(self) -> dict[str, list[float]]:
        """The labeled pairs seen so far (JSON): the fit is a function of them."""
        return {"r": list(self._r), "y": list(self._y)}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        """Restores the pairs and refits exactly as the run that saved them had."""
        self._r, self._y, self._model = [], [], None
        self.update(np.asarray(state["r"], dtype=np.float64), np.asarray(state["y"], dtype=np.float64))

    def decision_point(self) -> float:
        """The judge reward at which the calibrated P(correct) first reaches 0.5 (NaN: unfitted)."""
        if self._model is None:
            return float("nan")
        grid = np.linspace(0.0, 1.0, 1001)
        above = np.flatnonzero(self.transform(grid) >= 0.5)
        return float(grid[above[0]]) if len(above) else float("nan")

    def step(
        self, r_judge: np.ndarray, labeled: np.ndarray, correct: np.ndarray, gated: np.ndarray, *, apply_to_unlabeled: bool
    ) -> tuple[np.ndarray, dict[str, float]]:
        """One training step: (judge rewards to use, metrics). See the module doc for the order.

        ``labeled``: the sample has a gold answer; ``correct``: 1/0 from the verifier, NaN where it
        could not decide (Unknown) or the sample is unlabeled."""
        r = np.asarray(r_judge, dtype=np.float32)
        labeled, gated = np.asarray(labeled, dtype=bool), np.asarray(gated, dtype=bool)
        y = np.asarray(correct, dtype=np.float64)
        m: dict[str, float] = {"calib/fitted": float(self.fitted), "calib/pairs": float(len(self._y)),
                               "calib/decision_point": self.decision_point()}  # fmt: skip
        pairs = labeled & ~gated & np.isfinite(r) & np.isfinite(y)
        if pairs.any():  # out-of-sample: this step was not in the fit
            m["calib/brier_raw"] = float(np.mean((r[pairs] - y[pairs]) ** 2))
            m["calib/brier_calibrated"] = float(np.mean((self.transform(r[pairs]) - y[pairs]) ** 2))
        out = r.copy()
        if apply_to_unlabeled and self.fitted:
            target = ~labeled & ~gated & np.isfinite(r)
            out[target] = self.transform(r[target])
        self.update(r[pairs], y[pairs])
        return out, m
