"""Make the sample inputs of ``smcheck eval`` (deterministic: same bytes on every run).

    python samples/make_samples.py        # writes next to this script

* ``healthy_f32.npy`` + ``healthy_labels.npy`` - a float32 classifier (1000 rows, 10 classes)
  with moderate confidence: every method is fine in float32 and in float16.
* ``healthy.npz`` - the same two arrays in one file (``logits``, ``labels``).
* ``overconfident_f32.npy`` + ``overconfident_labels.npy`` - the same shape, trained too long:
  logits up to ~25, so exp(z) overflows float16 (ln(65504) = 11.09) and naive breaks there;
  some labels sit far below the max (p_y underflows, shifted gives inf).
* ``classifier.csv`` - 40 rows x 5 classes with a ``label`` column (one row ignored, -100).
* ``lm_logits_f16.npy`` + ``lm_labels.npy`` - a language-model-shaped (B, T, V) = (4, 32, 512)
  float16 array; padding positions have label -100.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def classifier(rng: np.random.Generator, n: int, c: int, scale: float, acc: float):
    """Logits of a classifier: the true class gets a bonus (correct with probability ``acc``)."""
    labels = rng.integers(0, c, n)
    z = rng.standard_normal((n, c)) * scale
    correct = rng.random(n) < acc
    bonus = np.abs(rng.standard_normal(n)) * scale + scale
    z[np.arange(n), labels] += np.where(correct, bonus, -bonus)
    return z, labels


def main(out: Path = HERE) -> None:
    rng = np.random.default_rng(20171005)
    z, y = classifier(rng, 1000, 10, 1.5, 0.9)
    np.save(out / "healthy_f32.npy", z.astype(np.float32))
    np.save(out / "healthy_labels.npy", y.astype(np.int64))
    with open(out / "healthy.npz", "wb") as fh:  # the same arrays under the default names
        np.savez(fh, logits=z.astype(np.float32), labels=y.astype(np.int64))

    z, y = classifier(rng, 1000, 10, 6.0, 0.95)
    np.save(out / "overconfident_f32.npy", z.astype(np.float32))
    np.save(out / "overconfident_labels.npy", y.astype(np.int64))

    z, y = classifier(rng, 40, 5, 2.0, 0.8)
    y[7] = -100
    lines = ["c0,c1,c2,c3,c4,label"]
    lines += [",".join(f"{v:.4f}" for v in row) + f",{lab}" for row, lab in zip(z, y, strict=True)]
    (out / "classifier.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    b, t, v = 4, 32, 512
    z, y = classifier(rng, b * t, v, 2.5, 0.6)
    y[rng.random(b * t) < 0.1] = -100  # padding tokens
    np.save(out / "lm_logits_f16.npy", z.reshape(b, t, v).astype(np.float16))
    np.save(out / "lm_labels.npy", y.astype(np.int64))


if __name__ == "__main__":
    main()
