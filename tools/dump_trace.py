#!/usr/bin/env python3
"""Dump a freekv trace directory from a Hugging Face causal LM, for `freekv eval --trace DIR`.

The trace holds what attention sees, per layer: post-RoPE keys and values of every token
[prompt + steps, kv_heads, head_dim] and the post-RoPE queries of the last prompt token and
of each decode step [steps + 1, q_heads, head_dim] (docs/eval.md describes the format).

It generates `steps` tokens greedily after the prompt, then runs one forward pass over prompt
+ generation (causal attention makes every position's q, k, v the same as during incremental
decoding) and captures q and k where the model applies RoPE, and v at v_proj.

Needs torch, transformers and numpy (pip install torch transformers numpy); not run in CI.
Works with models whose modeling file calls a module-level apply_rotary_pos_emb (Llama,
Mistral, Qwen2, Qwen3 and most others).

  python3 tools/dump_trace.py --model meta-llama/Llama-3.1-8B-Instruct --out trace-llama \\
      --prompt-file book.txt --prompt-tokens 8192 --steps 64
  freekv eval --trace trace-llama --layers 8

Needles (needles.json, docs/eval.md): a needle is a prompt token that one query head looks for
at one decode step; `freekv eval` reports whether each policy attended the page holding it at
that step. To add them for a real model:
  1. Plant a fact in the prompt ("The passkey is 71432.") and ask for it at the end.
  2. Find the fact's token positions: tokenize the prompt with return_offsets_mapping=True
     and take the tokens whose character span covers the fact (positions count from 0 at the
     first prompt token, as in k_<l>.npy).
  3. Find the decode step at which the model starts writing the answer (step 0 is the first
     generated token; the dump prints the generated text).
  4. Find which (layer, query head) retrieve it: for each layer l, with q = q_<l>.npy[1 + step]
     and k = k_<l>.npy (dump with --dtype f32 to load them with numpy.load directly), the
     softmax of q[h] . k[:, h // group].T / sqrt(head_dim) over the first prompt_tokens + step
     + 1 tokens; heads that put most of their weight on the fact's tokens are the ones
     to list (a few retrieval heads per model usually do).
  5. Pass each as --needle LAYER:STEP:Q_HEAD:TOKEN (repeatable), or write needles.json by hand:
     [{"layer": 14, "step": 3, "q_head": 9, "token": 5120}, ...]. This script checks the
     numbers against the dump and writes needles.json; freekv eval reads it strictly.
"""
import argparse
import json
import os
import sys


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="Hugging Face model id or local path")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--prompt-file", help="text file for the prompt (default: a built-in "
                   "haystack of numbered facts)")
    p.add_argument("--prompt-tokens", type=int, default=4096,
                   help="prompt length in tokens (the text is cut or repeated; default 4096)")
    p.add_argument("--steps", type=int, default=64, help="decode steps to generate (64)")
    p.add_argument("--layers", type=int, default=0, help="dump only the first N layers (all)")
    p.add_argument("--dtype", choices=["f16", "bf16", "f32"], default="f16",
                   help="array dtype on disk: float16, bfloat16 stored as uint16, or float32")
    p.add_argument("--torch-dtype", choices=["bfloat16", "float16", "float32"],
                   default="bfloat16", help="dtype the model runs in (bfloat16)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--needle", action="append", default=[], type=parse_needle,
                   metavar="LAYER:STEP:Q_HEAD:TOKEN",
                   help="a needle for needles.json (repeatable; see the notes above)")
    return p.parse_args()


def parse_needle(text):
    """LAYER:STEP:Q_HEAD:TOKEN, four non-negative integers, into a needles.json entry."""
    parts = text.split(":")
    if len(parts) != 4 or not all(x.isdigit() for x in parts):
        raise argparse.ArgumentTypeError(f"'{text}' is not LAYER:STEP:Q_HEAD:TOKEN")
    layer, step, q_head, token = (int(x) for x in parts)
    return {"layer": layer, "step": step, "q_head": q_head, "token": token}


def write_needles(out, needles, layers, steps, q_heads, prompt_tokens):
    """Checks the needles against the trace as freekv eval does and writes out/needles.json."""
    seen = set()
    for i, n in enumerate(needles):
        key = (n["layer"], n["step"], n["q_head"], n["token"])
        if n["layer"] >= layers or n["step"] >= steps or n["q_head"] >= q_heads:
            sys.exit(f"dump_trace: needle {i} {key}: layer, step or q_head beyond the trace "
                     f"({layers} layers, {steps} steps, {q_heads} query heads)")
        if n["token"] > prompt_tokens + n["step"]:
            sys.exit(f"dump_trace: needle {i} {key}: token {n['token']} does not exist at step "
                     f"{n['step']} (tokens 0..{prompt_tokens + n['step']})")
        if key in seen:
            sys.exit(f"dump_trace: needle {i} {key} is listed twice")
        seen.add(key)
    with open(os.path.join(out, "needles.json"), "w", encoding="utf-8") as f:
        f.write("[" + ",".join("\n  " + json.dumps(n) for n in needles)
                + ("\n]\n" if needles else "]\n"))


def haystack(n_facts):
    """Numbered facts: a long, varied text whose later questions need retrieval."""
    cities = ["Lisbon", "Oslo", "Quito", "Hanoi", "Nairobi", "Perth", "Lima", "Riga", "Accra",
              "Baku", "Cusco", "Dakar", "Fez", "Graz", "Hue", "Izmir"]
    colours = ["amber", "cobalt", "crimson", "ivory", "jade", "olive", "scarlet", "teal"]
    lines = []
    for i in range(n_facts):
        lines.append(f"Fact {i}: the archive in {cities[i % len(cities)]} stores box {i * 7919 % 10007} "
                     f"in the {colours[i * 31 % len(colours)]} room, shelf {i * 13 % 97}.")
    lines.append("Question: list the boxes stored in the jade room in Riga, with their shelves, "
                 "and explain how you found them.")
    return "\n".join(lines)


def main():
    a = parse_args()
    if a.prompt_tokens < 2 or a.steps < 1:
        sys.exit("dump_trace: --prompt-tokens must be at least 2 and --steps at least 1")
    try:
        import numpy as np
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        sys.exit(f"dump_trace: {e}: install torch, transformers and numpy")

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tok = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=getattr(torch, a.torch_dtype))
    model.to(device).eval()

    text = open(a.prompt_file, encoding="utf-8").read() if a.prompt_file else haystack(4000)
    ids = tok(text, return_tensors="pt").input_ids[0]
    if ids.numel() == 0:
        sys.exit("dump_trace: the prompt is empty")
    while ids.numel() < a.prompt_tokens:  # repeat a short text up to the length asked for
        ids = torch.cat([ids, ids])
    prompt = ids[: a.prompt_tokens].unsqueeze(0).to(device)

    with torch.no_grad():
        full = model.generate(prompt, attention_mask=torch.ones_like(prompt),
                              max_new_tokens=a.steps, min_new_tokens=a.steps, do_sample=False,
                              pad_token_id=tok.eos_token_id)
    P, S = a.prompt_tokens, full.shape[1] - a.prompt_tokens
    if S < 1:
        sys.exit("dump_trace: the model generated no tokens")

    layers = model.model.layers
    n_layers = len(layers) if a.layers <= 0 else min(a.layers, len(layers))
    attn0 = layers[0].self_attn
    modeling = sys.modules[type(attn0).__module__]
    if not hasattr(modeling, "apply_rotary_pos_emb"):
        sys.exit(f"dump_trace: {type(attn0).__module__} has no apply_rotary_pos_emb to hook")

    # Capture post-RoPE q and k where the model applies RoPE (one call per layer, in order),
    # and v at v_proj. Only the rows the trace needs are kept, on the host.
    captured = {"q": [], "k": [], "v": []}
    original_rope = modeling.apply_rotary_pos_emb

    def rope_hook(q, k, *args, **kwargs):
        q2, k2 = original_rope(q, k, *args, **kwargs)
        if len(captured["q"]) < n_layers:
            # [batch, heads, tokens, dim] -> [tokens, heads, dim]
            captured["q"].append(q2[0, :, P - 1:, :].transpose(0, 1).float().cpu())
            captured["k"].append(k2[0].transpose(0, 1).float().cpu())
        return q2, k2

    cfg = model.config
    hq = cfg.num_attention_heads
    hk = getattr(cfg, "num_key_value_heads", None) or hq
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // hq

    def v_hook(module, inputs, output):
        if len(captured["v"]) < n_layers:
            captured["v"].append(output[0].reshape(-1, hk, d).float().cpu())

    hooks = [layers[i].self_attn.v_proj.register_forward_hook(v_hook) for i in range(n_layers)]
    modeling.apply_rotary_pos_emb = rope_hook
    try:
        with torch.no_grad():
            model(full, use_cache=False)
    finally:
        modeling.apply_rotary_pos_emb = original_rope
        for h in hooks:
            h.remove()
    if len(captured["q"]) != n_layers or len(captured["v"]) != n_layers:
        sys.exit(f"dump_trace: captured {len(captured['q'])} RoPE calls and {len(captured['v'])} "
                 f"v_proj outputs for {n_layers} layers: unsupported attention implementation")

    os.makedirs(a.out, exist_ok=True)
    T = P + S

    def save(name, t, shape):
        if tuple(t.shape) != shape:
            sys.exit(f"dump_trace: {name}: shape {tuple(t.shape)}, expected {shape}")
        if a.dtype == "f32":
            arr, check = t.numpy().astype("<f4"), None
        elif a.dtype == "f16":
            arr = t.numpy().astype("<f2")
            check = arr  # values beyond 65504 overflow to infinity
        else:  # bfloat16 bits as little-endian uint16
            b = t.to(torch.bfloat16)
            arr, check = b.view(torch.int16).numpy().view("<u2"), b.float().numpy()
        if not np.isfinite(t.numpy()).all() or (check is not None and not np.isfinite(check).all()):
            sys.exit(f"dump_trace: {name} holds NaN or infinity in {a.dtype} "
                     "(freekv eval rejects such files); try --dtype f32 or bf16")
        np.save(os.path.join(a.out, name), np.ascontiguousarray(arr))

    for l in range(n_layers):
        save(f"k_{l}.npy", captured["k"][l], (T, hk, d))
        save(f"v_{l}.npy", captured["v"][l], (T, hk, d))
        save(f"q_{l}.npy", captured["q"][l], (S + 1, hq, d))

    header = {"format": "freekv-trace", "version": 1, "model": a.model, "layers": n_layers,
              "q_heads": hq, "kv_heads": hk, "head_dim": d, "prompt_tokens": P,
              "decode_steps": S, "dtype": a.dtype, "torch_dtype": a.torch_dtype}
    with open(os.path.join(a.out, "header.json"), "w", encoding="utf-8") as f:
        json.dump(header, f, indent=2)
        f.write("\n")
    if a.needle:
        write_needles(a.out, a.needle, n_layers, S, hq, P)
    print(f"generated: {tok.decode(full[0, P:])!r}")
    print(f"wrote {a.out}: {n_layers} layers, {hq}/{hk} heads, d {d}, prompt {P}, {S} steps, "
          f"{len(a.needle)} needles")


if __name__ == "__main__":
    main()
