"""WTA-CRS fine-tuning of the synthetic-language transformer: loss and memory.

A `DecoderLM` is pre-trained with exact gradients on the Markov language of
`configs/markov_lm.py` (vocabulary 128, branching 4; its entropy rate is the
best possible loss), then fine-tuned for the same number of steps on a
second language drawn with another seed, once with exact gradients and once
per sampling ratio with the attention output and MLP projections replaced by
`gradkit.layers.WTACRSLinear` (the paper's "level 2" layers; same
parameters, so the pre-trained weights carry over). Every run uses AdamW at
the same learning rate and the same batches.

Reported per run: the fine-tuned validation loss and its gap to the
language's entropy rate, and XLA's memory accounting of the jitted training
step (`memory_analysis()`: temporary bytes, the activations kept for the
backward pass among them, and the peak argument + output + temporary bytes).

Run:  python -m gradkit.experiments.bench_wta_crs [--steps=300 --ratios=0.3,0.1]
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from gradkit.experiments import synthetic_language
from gradkit.experiments.transformer import DecoderLM

_STEPS = flags.DEFINE_integer("steps", 300, "steps of pre-training and of each fine-tuning run")
_RATIOS = flags.DEFINE_list("ratios", ["0.3", "0.1"], "WTA-CRS sampling ratios (k / N)")
_BATCH = flags.DEFINE_integer("batch_size", 32, "sequences per batch")
_SEQ = flags.DEFINE_integer("seq_len", 64, "tokens per sequence")
_WIDTH = flags.DEFINE_integer("d_model", 128, "model width (d_ff is twice it)")
_LR = flags.DEFINE_float("learning_rate", 3e-3, "AdamW learning rate")


def _model(wta_crs_ratio: float | None) -> DecoderLM:
  width = _WIDTH.value
  return DecoderLM(128, d_model=width, num_heads=4, num_layers=2, d_ff=2 * width,
                   max_len=_SEQ.value, wta_crs_ratio=wta_crs_ratio, rngs=nnx.Rngs(0))


def _loss(model: DecoderLM, tokens: jax.Array) -> jax.Array:
  logits = model(tokens[:, :-1])
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]))


def _train(model: DecoderLM, batches: np.ndarray, validation: np.ndarray) -> dict:
  """AdamW over `batches`; the validation loss (exact forward) and the step's memory."""
  optimizer = nnx.Optimizer(model, optax.adamw(_LR.value), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, tokens):
    loss, grads = nnx.value_and_grad(_loss)(model, tokens)
    optimizer.update(model, grads)
    return loss

  memory = step.lower(model, optimizer, jnp.asarray(batches[0])).compile().memory_analysis()
  start = time.perf_counter()
  for tokens in batches:
    step(model, optimizer, jnp.asarray(tokens))
  seconds = time.perf_counter() - start
  model.eval()
  loss = float(nnx.jit(_loss)(model, jnp.asarray(validation)))
  model.train()
  return {
      "loss": loss,
      "temp_bytes": memory.temp_size_in_bytes,
      "peak_bytes": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                     + memory.temp_size_in_bytes - memory.alias_size_in_bytes),
      "seconds": seconds,
  }


def _batches(seed: int, steps: int) -> tuple[np.ndarray, np.ndarray, float]:
  language = synthetic_language.make_markov_language(vocab_size=128, branching=4, seed=seed)
  tokens = synthetic_language.sample_sequences(
      language, steps * _BATCH.value, _SEQ.value + 1, seed=seed + 100)
  validation = synthetic_language.sample_sequences(language, 256, _SEQ.value + 1, seed=seed + 200)
  return (tokens.reshape(steps, _BATCH.value, -1), validation,
          synthetic_language.entropy_rate(language))


def main(argv):
  del argv
  steps = _STEPS.value
  pretrain, _, _ = _batches(0, steps)
  finetune, validation, floor = _batches(1, steps)
  base = _model(None)
  _train(base, pretrain, validation)
  pretrained = nnx.state(base, nnx.Param)
  rows = []
  for ratio in [None, *map(float, _RATIOS.value)]:
    model = _model(ratio)
    nnx.update(model, pretrained)
    result = _train(model, finetune, validation)
    rows.append(("exact" if ratio is None else f"WTA-CRS@{ratio}", result))
  exact = rows[0][1]
  print(f"fine-tuning {steps} steps, batch {_BATCH.value} x {_SEQ.value} tokens, "
        f"d_model {_WIDTH.value}; entropy-rate floor {floor:.4f} nats")
  print("| gradients | val loss | gap to floor | step temp MiB | x exact | step peak MiB | s |")
  print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  for name, r in rows:
    print(f"| {name} | {r['loss']:.4f} | {r['loss'] - floor:.4f} | {r['temp_bytes'] / 2**20:.2f} "
          f"| {r['temp_bytes'] / exact['temp_bytes']:.2f} | {r['peak_bytes'] / 2**20:.2f} "
          f"| {r['seconds']:.1f} |")


if __name__ == "__main__":
  app.run(main)
