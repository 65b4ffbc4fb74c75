#!/usr/bin/env python3
"""End-to-end check of flash_attn_rs inside Hugging Face Transformers models (GPU).

Builds three small models from configs with random weights (fixed seed), no downloads:

* llama   -- GQA (16 heads, 4 KV heads, head_dim 64)
* mistral -- sliding window 256 < seqlen 1024 (16 heads, 4 KV heads, head_dim 128)
* gemma2  -- attention logit softcapping (10, see GEMMA2_SOFTCAP), alternating sliding (256) and
             full layers (8 heads, 4 KV heads, head_dim 256)

q_proj and k_proj are scaled (QK_GAIN) so that the attention is peaked, as in a trained model.

Each one three times with the same weights: the baseline implementation in bf16 ("sdpa";
"eager" for Gemma-2, since sdpa does not apply softcapping and transformers 5 refuses it there),
the baseline in float32 (the reference), and attn_implementation="flash_attn_rs" in bf16.

The bound: bf16 attention outputs differ from exact ones by a few bf16 ulps per layer, and the
layers compound it, so ours and the baseline differ from each other by about as much as each
differs from exact: their difference alone has no scale to judge it by. Both bf16 runs are
compared with the float32 reference instead, and ours must satisfy

    err(ours - fp32) <= 2 * err(baseline bf16 - fp32) + slack

with slack about one bf16 ulp: 2**-8 of the reference's largest magnitude (2e-4 relative for
the loss). Checks:

* logits / loss on a random batch (2 x 1024), and on a left-padded batch with an attention_mask
  (padded positions are left out of the comparison and of the loss);
* one training step: gradients of q_proj / k_proj / v_proj of the first and last layer;
* greedy generate() of 32 new tokens from a 64-token prompt (one row left-padded), and for
  sliding-window models from a prompt longer than the window; a token mismatch counts as passed
  (with a note) where the baseline's top1 - top2 logit margin at the first differing step is < 0.1.
  Random weights make such near ties common, so the tokens alone say little: each run's per-step
  scores (KV-cache decode) are also held, by the rule above, against the fp32 model's full
  forward over that run's own tokens;
* dispatch: the flash_attn_rs kernels were really called (dense without padding, varlen with).

Writes one JSON line per model and check to --out; exits 0 only if every check passed.

    python scripts/check_models.py --out check_models.jsonl
"""

import argparse
import copy
import json
import sys
import time
import traceback

import torch

NEAR_TIE = 0.1  # logits: a greedy mismatch under this top1 - top2 margin is a tie, not an error
ULP = 2.0 ** -8  # bf16 relative rounding step (8 significant bits)
LOSS_SLACK = 2e-4  # relative; loss errors are averages over all tokens, far below the logits' max

# Random init gives near-uniform attention (scores ~ 0.1), where neither the window edge nor
# rounding inside the softmax matters. Scaling q_proj and k_proj by 2 makes the scores O(1..10)
# and the attention peaked, like a trained model's. A larger gain makes the bf16 runs chaotic:
# with 4, the sdpa bf16 logits already differ from fp32 by ~30% of their range (measured on CPU
# with these configs), and that loose bound would hide real errors.
QK_GAIN = 2.0
# Gemma-2 ships attn_logit_softcapping=50, which only bites on a trained model's large scores; on
# these scores tanh(s / 50) ~ s / 50 and a kernel ignoring softcap would still pass. At 10 the cap
# changes the logits by ~10x the bf16 noise.
GEMMA2_SOFTCAP = 10.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="check_models.jsonl", help="JSON Lines output path")
    p.add_argument("--models", default="llama,mistral,gemma2", help="comma-separated subset")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for testing this script itself")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Models


def model_specs(quick):
    """name -> (config class name, config kwargs, baseline implementation)."""
    if quick:
        size = dict(vocab_size=512, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=32)
        window = 16
    else:
        size = dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
                    num_attention_heads=16, num_key_value_heads=4, head_dim=64)
        window = 256
    common = dict(max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=None,
                  attention_dropout=0.0)
    llama = dict(size, **common)
    mistral = dict(size, **common, head_dim=size["head_dim"] * 2, sliding_window=window)
    gemma2 = dict(size, **common, num_attention_heads=size["num_attention_heads"] // 2,
                  head_dim=size["head_dim"] * 4, query_pre_attn_scalar=size["head_dim"] * 4,
                  sliding_window=window, attn_logit_softcapping=GEMMA2_SOFTCAP, final_logit_softcapping=30.0)
    return {
        "llama": ("LlamaConfig", llama, "sdpa"),
        "mistral": ("MistralConfig", mistral, "sdpa"),
        "gemma2": ("Gemma2Config", gemma2, "eager"),
    }


def build(cfg, impl, state, device, dtype):
    import transformers

    cfg = copy.deepcopy(cfg)
    try:
        model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation=impl)
    except TypeError:  # very old transformers: no attn_implementation argument
        cfg._attn_implementation = impl
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    got = getattr(model.config, "_attn_implementation", None)
    if got != impl:
        raise RuntimeError(f"asked for attn_implementation={impl!r}, the model has {got!r}")
    if state is None:  # the first build defines the weights
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("q_proj.weight", "k_proj.weight")):
                    p.mul_(QK_GAIN)
    else:
        model.load_state_dict(state)
    model.to(device)
    fp32_buffers = {n: b.detach().clone() for n, b in model.named_buffers() if b.is_floating_point()}
    model.to(dtype)
    # Keep RoPE's inverse frequencies in float32, as loading a checkpoint with dtype= would.
    for name, buf in fp32_buffers.items():
        if "inv_freq" in name:
            owner, _, leaf = name.rpartition(".")
            model.get_submodule(owner)._buffers[leaf] = buf
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.eos_token_id = None
        model.generation_config.pad_token_id = cfg.pad_token_id
    return model


# ---------------------------------------------------------------------------------------------
# Comparisons


def max_err(x, ref):
    return (x.float() - ref.float()).abs().max().item()


def compare(ours, base, ref):
    """Max abs errors against the fp32 reference and the ratio-rule bound."""
    scale = ref.float().abs().max().item()
    e_o, e_b = max_err(ours, ref), max_err(base, ref)
    bound = 2.0 * e_b + ULP * scale
    return dict(err_ours_vs_fp32=e_o, err_base_vs_fp32=e_b, err_ours_vs_base=max_err(ours, base),
                rel_ours_vs_fp32=e_o / max(scale, 1e-30), rel_base_vs_fp32=e_b / max(scale, 1e-30),
                ref_scale=scale, bound=bound, passed=e_o <= bound)


def compare_loss(ours, base, ref):
    d_o, d_b = abs(ours - ref), abs(base - ref)
    bound = 2.0 * d_b + LOSS_SLACK * abs(ref)
    return dict(loss_fp32=ref, loss_ours=ours, loss_base=base, diff_ours_vs_fp32=d_o, diff_base_vs_fp32=d_b,
                diff_ours_vs_base=abs(ours - base), bound=bound, passed=d_o <= bound)


def forward(model, ids, mask=None, position_ids=None, grad=False):
    labels = ids
    if mask is not None:
        # Leave out padding and the first real token too: its logits come from a pad position,
        # whose output is arbitrary (and differs between implementations).
        prev = torch.cat([torch.ones_like(mask[:, :1]), mask[:, :-1]], dim=1)
        labels = ids.masked_fill((mask == 0) | (prev == 0), -100)
    with torch.set_grad_enabled(grad):
        out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, labels=labels, use_cache=False)
    return out.logits, out.loss


def watched_params(model, n_layers):
    names = [f"layers.{i}.self_attn.{p}_proj.weight" for i in (0, n_layers - 1) for p in "qkv"]
    params = dict(model.named_parameters())
    found = {}
    for short in names:
        full = [n for n in params if n.endswith(short)]
        if len(full) != 1:
            raise RuntimeError(f"parameter *{short}: found {full}")
        found[short] = params[full[0]]
    return found


def greedy(model, prompt, mask, new_tokens):
    import transformers

    gen = transformers.GenerationConfig(
        max_new_tokens=new_tokens, do_sample=False, num_beams=1, use_cache=True,
        pad_token_id=model.config.pad_token_id, eos_token_id=None,
        return_dict_in_generate=True, output_scores=True,
    )
    with torch.no_grad():
        out = model.generate(input_ids=prompt, attention_mask=mask, generation_config=gen)
    scores = torch.stack([s.float() for s in out.scores], dim=1)  # (batch, steps, vocab)
    return out.sequences, scores


def teacher_forced(ref, sequences, mask, steps):
    """fp32 reference logits for each generated step, by one full forward over the sequence."""
    full = torch.cat([mask, torch.ones_like(mask[:, :1]).expand(-1, steps)], dim=1)
    pos = (full.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = ref(input_ids=sequences, attention_mask=full, position_ids=pos, use_cache=False).logits
    start = mask.shape[1] - 1
    return logits[:, start:start + steps].float()


def compare_generate(ref, base_model, our_model, prompt, mask, new_tokens):
    """Tokens of both greedy runs, and each run's per-step scores (KV-cache decode) against the
    fp32 reference's full forward over that run's own tokens, by the ratio rule."""
    seq_b, s_b = greedy(base_model, prompt, mask, new_tokens)
    seq_o, s_o = greedy(our_model, prompt, mask, new_tokens)
    plen = prompt.shape[1]
    t_b, t_o = seq_b[:, plen:], seq_o[:, plen:]
    rows, tokens_ok, notes = [], True, []
    for r in range(prompt.shape[0]):
        diff = (t_b[r] != t_o[r]).nonzero()
        if diff.numel() == 0:
            rows.append(dict(row=r, first_diff=None))
            continue
        step = int(diff[0])
        top_b = s_b[r, step].topk(2).values
        top_o = s_o[r, step].topk(2).values
        margin = (top_b[0] - top_b[1]).item()
        tie = margin < NEAR_TIE
        tokens_ok &= tie
        notes.append(f"row {r} differs from step {step}, baseline margin {margin:.4f}"
                     + (" (near tie)" if tie else " (NOT a near tie)"))
        rows.append(dict(row=r, first_diff=step, margin_base=margin, margin_ours=(top_o[0] - top_o[1]).item(),
                         token_base=int(t_b[r, step]), token_ours=int(t_o[r, step])))
    r_o, r_b = teacher_forced(ref, seq_o, mask, new_tokens), teacher_forced(ref, seq_b, mask, new_tokens)
    scale = max(r_o.abs().max().item(), r_b.abs().max().item())
    e_o, e_b = max_err(s_o, r_o), max_err(s_b, r_b)
    bound = 2.0 * e_b + ULP * scale
    if e_o > bound:
        notes.append("decode scores off the fp32 reference")
    matched = sum(1 for x in rows if x["first_diff"] is None)
    return dict(rows_identical=matched, rows=len(rows), per_row=rows, near_tie_margin=NEAR_TIE,
                err_ours_vs_fp32=e_o, err_base_vs_fp32=e_b, ref_scale=scale, bound=bound,
                bound_rule=f"identical tokens, or first mismatch at baseline margin < {NEAR_TIE}; and decode "
                           "scores vs fp32 full forward: err_ours <= 2 * err_base + ulp * scale",
                passed=bool(tokens_ok and e_o <= bound), note="; ".join(notes) or None)


# ---------------------------------------------------------------------------------------------
# Driver


class Counter:
    """Wraps flash_attn_rs' kernels to prove that the models really called them."""

    def __init__(self):
        import flash_attn_rs

        self.calls = {"dense": 0, "varlen": 0}
        for attr, key in (("flash_attn_func", "dense"), ("flash_attn_varlen_func", "varlen")):
            fn = getattr(flash_attn_rs, attr)
            if not getattr(fn, "_counted", False):
                setattr(flash_attn_rs, attr, self._wrap(fn, key))

    def _wrap(self, fn, key):
        def counted(*args, **kwargs):
            self.calls[key] += 1
            return fn(*args, **kwargs)

        counted._counted = True
        return counted

    def take(self):
        calls = dict(self.calls)
        self.calls.update(dense=0, varlen=0)
        return calls


def check_model(name, spec, args, counter, emit):
    import transformers

    cls_name, kwargs, base_impl = spec
    cfg = getattr(transformers, cls_name)(**kwargs)
    n_layers, vocab = cfg.num_hidden_layers, cfg.vocab_size
    seqlen = 64 if args.quick else 1024
    device = torch.device(args.device)

    torch.manual_seed(args.seed)
    ref = build(cfg, base_impl, None, device, torch.float32)
    state = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    base = build(cfg, base_impl, state, device, torch.bfloat16)
    ours = build(cfg, "flash_attn_rs", state, device, torch.bfloat16)
    info = dict(baseline=base_impl, layers=n_layers, heads=cfg.num_attention_heads,
                kv_heads=cfg.num_key_value_heads, head_dim=getattr(cfg, "head_dim", None),
                sliding_window=getattr(cfg, "sliding_window", None),
                softcap=getattr(cfg, "attn_logit_softcapping", None))

    g = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    ids = torch.randint(3, vocab, (2, seqlen), generator=g).to(device)
    pad = seqlen // 4  # row 1 left-padded
    mask = torch.ones(2, seqlen, dtype=torch.long, device=device)
    mask[1, :pad] = 0
    ids_padded = ids.masked_fill(mask == 0, cfg.pad_token_id)
    pos_padded = (mask.cumsum(-1) - 1).clamp(min=0)  # what generate() passes

    # (a) + (b): unpadded batch, one training step (dropout is 0 in the configs)
    counter.take()
    grads, logits, losses = {}, {}, {}
    for tag, model in (("ref", ref), ("base", base), ("ours", ours)):
        model.train()
        model.zero_grad(set_to_none=True)
        lg, loss = forward(model, ids, grad=True)
        loss.backward()
        logits[tag], losses[tag] = lg.detach(), loss.item()
        grads[tag] = {k: p.grad.detach().float().clone() for k, p in watched_params(model, n_layers).items()}
        model.zero_grad(set_to_none=True)
        model.eval()
        del lg, loss
    calls_dense = counter.take()
    emit(name, "logits", info, **compare(logits["ours"], logits["base"], logits["ref"]))
    emit(name, "loss", info, **compare_loss(losses["ours"], losses["base"], losses["ref"]))
    per_param = {k: compare(grads["ours"][k], grads["base"][k], grads["ref"][k]) for k in grads["ref"]}
    emit(name, "grads", info, per_param=per_param, bound="per parameter: 2 * err_base + ulp * scale",
         passed=all(v["passed"] for v in per_param.values()))
    del logits, grads

    # (a) padded batch: compare real tokens only
    counter.take()
    logits, losses = {}, {}
    for tag, model in (("ref", ref), ("base", base), ("ours", ours)):
        lg, loss = forward(model, ids_padded, mask, pos_padded)
        logits[tag], losses[tag] = lg[mask.bool()], loss.item()
    calls_padded = counter.take()
    emit(name, "logits_padded", info, pad_tokens=pad, **compare(logits["ours"], logits["base"], logits["ref"]))
    emit(name, "loss_padded", info, pad_tokens=pad, **compare_loss(losses["ours"], losses["base"], losses["ref"]))
    del logits, state
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # (c) greedy generation, one row left-padded
    prompts = [("generate", 16 if args.quick else 64)]
    if getattr(cfg, "sliding_window", None):
        prompts.append(("generate_past_window", cfg.sliding_window + (16 if args.quick else 64)))
    calls_gen = {}
    for check, plen in prompts:
        prompt = torch.randint(3, vocab, (2, plen), generator=g).to(device)
        pmask = torch.ones_like(prompt)
        pmask[1, : plen // 8] = 0
        prompt = prompt.masked_fill(pmask == 0, cfg.pad_token_id)
        counter.take()
        res = compare_generate(ref, base, ours, prompt, pmask, 8 if args.quick else 32)
        calls_gen[check] = counter.take()
        emit(name, check, info, prompt_len=plen, new_tokens=8 if args.quick else 32, **res)

    # dispatch: our kernels ran, dense without padding and varlen with it
    ok = (calls_dense["dense"] >= n_layers and calls_dense["varlen"] == 0
          and calls_padded["varlen"] >= n_layers and calls_padded["dense"] == 0
          and all(c["varlen"] > 0 for c in calls_gen.values()))
    emit(name, "dispatch", info, unpadded=calls_dense, padded=calls_padded, generate=calls_gen,
         bound="unpadded: only flash_attn_func; padded: only flash_attn_varlen_func", passed=ok)


def main(argv=None):
    args = parse_args(argv)
    import transformers

    import flash_attn_rs.transformers as fa_tf

    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference must be float32
        torch.backends.cudnn.allow_tf32 = False
        card = torch.cuda.get_device_name()
    else:
        card = args.device
    fa_tf.register()
    counter = Counter()
    env = dict(torch=torch.__version__, transformers=transformers.__version__, card=card)
    specs = model_specs(args.quick)
    results = []

    with open(args.out, "w") as out:
        def emit(model, check, info, **fields):
            row = dict(model=model, check=check, **fields, **info, **env)
            results.append(row)
            out.write(json.dumps(row, default=str) + "\n")
            out.flush()

        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            t0 = time.time()
            try:
                check_model(name, specs[name], args, counter, emit)
            except Exception as e:  # report and go on with the other models
                traceback.print_exc()
                emit(name, "error", {}, error=f"{type(e).__name__}: {e}", passed=False)
            print(f"[{name}] {time.time() - t0:.1f}s", file=sys.stderr)

    print(f"torch {env['torch']}, transformers {env['transformers']}, {card}")
    print(f"{'model':8} {'check':22} {'ours-fp32':>11} {'base-fp32':>11} {'ours-base':>11} {'bound':>11}  result")
    for r in results:
        def num(key):
            v = r.get(key)
            return f"{v:11.3e}" if isinstance(v, float) else f"{'':11}"
        e_o = "err_ours_vs_fp32" if "err_ours_vs_fp32" in r else "diff_ours_vs_fp32"
        e_b = "err_base_vs_fp32" if "err_base_vs_fp32" in r else "diff_base_vs_fp32"
        e_x = "err_ours_vs_base" if "err_ours_vs_base" in r else "diff_ours_vs_base"
        verdict = "ok" if r["passed"] else "FAIL"
        if r["check"] == "grads":
            worst = max(r["per_param"].items(), key=lambda kv: kv[1]["err_ours_vs_fp32"] / kv[1]["bound"])
            r = dict(r, **{k: v for k, v in worst[1].items() if k != "passed"})
            verdict += f" (worst {worst[0]})"
        if r.get("note"):
            verdict += f" ({r['note']})"
        if r.get("error"):
            verdict += f" {r['error']}"
        print(f"{r['model']:8} {r['check']:22} {num(e_o)} {num(e_b)} {num(e_x)} {num('bound')}  {verdict}")
    failed = [f"{r['model']}/{r['check']}" for r in results if not r["passed"]]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed" + (f": {', '.join(failed)}" if failed else ""))
    return 0 if not failed and results else 1


if __name__ == "__main__":
    sys.exit(main())
