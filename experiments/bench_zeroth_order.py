"""Memory of a zeroth-order (MeZO) step vs one forward pass vs a backprop step.

All figures are XLA's own accounting of the compiled programs
(`jax.jit(...).lower(...).compile().memory_analysis()`), on a small
LLaMA-style decoder (`gradkit.experiments.models.llama_like_params`: token
embedding, RMSNorm, causal attention, SwiGLU MLP, LM head) in float32. A
program's peak is argument + output + temporary bytes minus the bytes of
outputs aliased to donated arguments; a step made of several programs peaks
at its largest one (all of them see the whole parameter tree as argument).

Rows:
* forward: `jax.jit(loss)` — one inference pass, the reference figure;
* backprop SGD step: params <- params - lr grad, params donated;
* mezo in one program: `gradkit.create("mezo")`'s update + apply_updates
  jitted with params donated (functional: theta +- eps z live beside theta);
* mezo_step: `gradkit.optimizers.mezo_step`, the in-place sequence of
  programs; its peak and each program's.

Run:  python -m gradkit.experiments.bench_zeroth_order [--layers=4 --d_model=64]
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from absl import app, flags

import gradkit
from gradkit.experiments.models import llama_like_params, materialize
from gradkit.optimizers.zeroth_order import mezo_step


def _rms_norm(x: jax.Array, scale: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6) * scale


def decoder_loss(params: dict[str, Any], tokens: jax.Array, heads: int = 4) -> jax.Array:
  """Next-token cross-entropy of a pre-norm decoder over tokens (batch, seq + 1)."""
  inputs, targets = tokens[:, :-1], tokens[:, 1:]
  batch, seq = inputs.shape
  x = params["embed"]["embedding"][inputs]
  d_model = x.shape[-1]
  causal = jnp.tril(jnp.ones((seq, seq), bool))
  for block in params["layers"].values():
    h = _rms_norm(x, block["attn_norm"]["scale"])
    attn = block["attn"]
    q, k, v = (jnp.reshape(h @ attn[n]["kernel"], (batch, seq, heads, d_model // heads))
               for n in ("q", "k", "v"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d_model / heads)
    weights = jax.nn.softmax(jnp.where(causal, scores, -1e9), axis=-1)
    mixed = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, seq, d_model)
    x = x + mixed @ attn["o"]["kernel"]
    h = _rms_norm(x, block["mlp_norm"]["scale"])
    mlp = block["mlp"]
    x = x + (jax.nn.silu(h @ mlp["gate"]["kernel"]) * (h @ mlp["up"]["kernel"])) @ mlp["down"][
        "kernel"]
  logits = _rms_norm(x, params["final_norm"]["scale"]) @ params["lm_head"]["kernel"]
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets))


def peak_bytes(compiled: jax.stages.Compiled) -> int:
  """argument + output + temp - aliased bytes of one compiled program."""
  m = compiled.memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
          - m.alias_size_in_bytes)


def decoder_problem(
    d_model: int = 64, layers: int = 4, ffn: int = 172, vocab: int = 256, batch: int = 4,
    seq: int = 32,
) -> tuple[dict[str, Any], jax.Array]:
  """(float32 params of the LLaMA-style tree, a batch of token ids (batch, seq + 1))."""
  params = materialize(llama_like_params(d_model, layers, ffn, vocab))
  return params, jax.random.randint(jax.random.key(1), (batch, seq + 1), 0, vocab)


def forward_peak(params: Any, tokens: jax.Array) -> int:
  """Peak bytes of one forward pass, `jax.jit(decoder_loss)`."""
  return peak_bytes(jax.jit(decoder_loss).lower(params, tokens).compile())


def backprop_step_peak(params: Any, tokens: jax.Array) -> int:
  """Peak bytes of a jitted SGD step (params donated): forward, backward, update."""

  def sgd_step(params, tokens):
    grads = jax.grad(decoder_loss)(params, tokens)
    return jax.tree.map(lambda p, g: p - 1e-3 * g, params, grads)

  return peak_bytes(jax.jit(sgd_step, donate_argnums=0).lower(params, tokens).compile())


def mezo_one_program_peak(params: Any, tokens: jax.Array) -> int:
  """Peak bytes of `mezo`'s update + apply_updates as one jitted program (params donated)."""
  tx = gradkit.create("mezo")

  def step(params, state, tokens):
    updates, state = tx.update(params, state, params,
                               obj_fn=functools.partial(decoder_loss, tokens=tokens))
    return optax.apply_updates(params, updates), state

  compiled = jax.jit(step, donate_argnums=0).lower(params, tx.init(params), tokens).compile()
  return peak_bytes(compiled)


def mezo_step_peaks(params: Any, tokens: jax.Array) -> dict[str, int]:
  """Peak bytes of each program of `mezo_step`; the step peaks at the largest."""
  lean = mezo_step(decoder_loss)
  compiled = lean.programs(params, lean.init(params), tokens)
  return {name: peak_bytes(program) for name, program in compiled.items()}


def measure(**problem: int) -> dict[str, int]:
  """Every row of the module docstring, plus "params", for `decoder_problem(**problem)`."""
  params, tokens = decoder_problem(**problem)
  programs = mezo_step_peaks(params, tokens)
  figures = {
      "params": sum(x.nbytes for x in jax.tree.leaves(params)),
      "forward": forward_peak(params, tokens),
      "backprop_sgd_step": backprop_step_peak(params, tokens),
      "mezo_one_program": mezo_one_program_peak(params, tokens),
      "mezo_step": max(programs.values()),
  }
  figures.update({f"mezo_step.{k}": v for k, v in programs.items()})
  return figures


_D_MODEL = flags.DEFINE_integer("d_model", 64, "model width")
_LAYERS = flags.DEFINE_integer("layers", 4, "decoder blocks")
_BATCH = flags.DEFINE_integer("batch", 4, "sequences per batch")


def main(argv: list[str]) -> None:
  del argv
  figures = measure(d_model=_D_MODEL.value, layers=_LAYERS.value, ffn=int(2.6875 * _D_MODEL.value),
                    batch=_BATCH.value)
  forward = figures["forward"]
  print(f"{jax.default_backend()} | params {figures['params'] / 1e6:.3f} MB")
  print("| program | peak MB | / forward |\n| --- | ---: | ---: |")
  for name, value in figures.items():
    if name != "params":
      print(f"| {name} | {value / 1e6:.3f} | {value / forward:.3f} |")


if __name__ == "__main__":
  app.run(main)
