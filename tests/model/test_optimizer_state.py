"""Optimizer state files: HF Trainer optimizer.pt, plain AdamW, safetensors, Adafactor."""

import pytest
import torch
from safetensors.torch import save_file

from factrace.config import EncoderConfig
from factrace.data.records import Passage
from factrace.encode.encoder import Encoder
from factrace.errors import FactraceError
from factrace.model.optimizer_state import load_optimizer_state, restore_adamw
from reference import reference_projection
from tiny import tiny_loaded, tiny_model


def _train(model, optimizer, steps=2):
    torch.manual_seed(0)
    for _ in range(steps):
        ids = torch.randint(3, 90, (2, 9))
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def _trainer_groups(model):
    from transformers import Trainer
    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = list(model.named_parameters())
    return [{"params": [p for n, p in named if n in decay], "weight_decay": 0.1},
            {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0}]


def test_hf_trainer_optimizer_pt(tmp_path):
    model = tiny_model("llama")
    opt = torch.optim.AdamW(_trainer_groups(model), lr=1e-3, betas=(0.9, 0.95))
    _train(model, opt)
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    state = load_optimizer_state(tmp_path / "optimizer.pt", model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(state[name].exp_avg_sq, opt.state[p]["exp_avg_sq"])
        assert state[name].beta2 == 0.95 and state[name].step == 2
    # bias correction is Adam's
    name = "model.layers.0.mlp.up_proj.weight"
    torch.testing.assert_close(state[name].bias_corrected(),
                               state[name].exp_avg_sq / (1 - 0.95**2))
    # restore_adamw rebuilds the same optimizer: the next step matches
    twin = tiny_model("llama")
    twin.load_state_dict(model.state_dict())
    restored = restore_adamw(twin, tmp_path / "optimizer.pt")
    _train(model, opt, 1)
    _train(twin, restored, 1)
    for (n, a), (_, b) in zip(model.named_parameters(), twin.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, msg=n)


def test_plain_adamw_state_dict(tmp_path):
    model = tiny_model("gpt2")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train(model, opt)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    state = load_optimizer_state(tmp_path / "opt.pt", model)
    for name, p in model.named_parameters():
        torch.testing.assert_close(state[name].exp_avg_sq, opt.state[p]["exp_avg_sq"])


def test_safetensors_by_name(tmp_path):
    model = tiny_model("llama")
    tensors = {f"{n}.exp_avg_sq": torch.rand_like(p) for n, p in model.named_parameters()}
    save_file(tensors, tmp_path / "v.safetensors")
    state = load_optimizer_state(tmp_path / "v.safetensors", model)
    name = "model.layers.1.self_attn.q_proj.weight"
    torch.testing.assert_close(state[name].exp_avg_sq, tensors[name + ".exp_avg_sq"])


def _known_v(model, seed=0) -> dict[str, torch.Tensor]:
    """A known second moment V of every parameter, in the parameter's own layout. The weights'
    V is rank one (outer product of uneven positive row and column profiles), so Adafactor's
    factored state describes it exactly and its correction must be exactly 1/sqrt(V)."""
    g = torch.Generator().manual_seed(seed)
    vs = {}
    for name, p in model.named_parameters():
        if p.dim() >= 2:  # fused experts [E, R, C]: rank one per expert
            rows = torch.rand(*p.shape[:-1], 1, generator=g, dtype=torch.float64) * 4 + 0.25
            cols = torch.rand(*p.shape[:-2], 1, p.shape[-1], generator=g,
                              dtype=torch.float64) * 4 + 0.25
            vs[name] = (rows * cols * 1e-5).float()
        else:
            vs[name] = (torch.rand(p.shape, generator=g) + 0.5) * 1e-5
    return vs


def _by_hand(model, vs, kind) -> dict[int, dict]:
    """Adafactor's state of V, built by hand: row = mean over the last dimension, col = mean over
    the second-to-last (transformers: ``exp_avg_sq_row [R]``/``exp_avg_sq_col [C]``; torch:
    ``row_var [R, 1]``/``col_var [1, C]``), each in the parameter's layout."""
    state = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        v = vs[name]
        if p.dim() < 2:
            state[i] = {"exp_avg_sq" if kind == "transformers" else "variance": v}
        elif kind == "transformers":
            state[i] = {"exp_avg_sq_row": v.mean(dim=-1), "exp_avg_sq_col": v.mean(dim=-2)}
        else:
            state[i] = {"row_var": v.mean(dim=-1, keepdim=True),
                        "col_var": v.mean(dim=-2, keepdim=True)}
    return state


def _adafactor_after_one_step(model, vs, kind):
    """The optimizer itself, one step with gradient sqrt(V): at step 1 both Adafactors keep the
    first squared gradient as it is (β2 = 0), so their state is the factored V."""
    from transformers.optimization import Adafactor

    if kind == "transformers":
        opt = Adafactor(model.parameters(), lr=1e-3, relative_step=False, scale_parameter=False)
    else:
        opt = torch.optim.Adafactor(model.parameters(), lr=1e-3)
    for name, p in model.named_parameters():
        p.grad = vs[name].sqrt()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


@pytest.mark.parametrize("kind", ["transformers", "torch"])
# gpt2: Conv1D, weight stored [d_in, d_out]; mixtral: fused experts [E, out, in], state by expert
@pytest.mark.parametrize("arch", ["llama", "gpt2", "mixtral"])
def test_adafactor_state_corrects_by_its_second_moment(tmp_path, arch, kind):
    model = tiny_model(arch)
    vs = _known_v(model)
    opt = _adafactor_after_one_step(model, vs, kind)
    saved = opt.state_dict()
    hand = _by_hand(model, vs, kind)
    for i, entry in hand.items():  # our reading of the state convention is the optimizer's
        for key, want in entry.items():
            torch.testing.assert_close(saved["state"][i][key], want, rtol=1e-5, atol=0)
    torch.save(saved, tmp_path / "ada.pt")
    state = load_optimizer_state(tmp_path / "ada.pt", model)

    loaded = tiny_loaded(arch)
    loaded.model.load_state_dict(model.state_dict())
    config = EncoderConfig(dim=64, second_moment="adafactor", hessian="none", normalize=False,
                           batch_tokens=10_000)
    enc = Encoder(loaded, config, state)
    canonical_v = {tm.name: tm.weight_of(vs[tm.param_name]) for tm in enc.tracked}
    assert any(tm.expert >= 0 for tm in enc.tracked) == (arch == "mixtral")
    assert any(tm.transposed for tm in enc.tracked) == (arch == "gpt2")
    for tm in enc.tracked:
        moment = state[tm.param_name]
        assert moment.row is not None and moment.col is not None and moment.exp_avg_sq is None
        corr = enc._corrections[tm.name]
        want = canonical_v[tm.name].double().rsqrt()
        got = torch.outer(corr.row.double(), corr.col.double())
        assert got.shape == want.shape == (tm.d_out, tm.d_in), tm.name
        torch.testing.assert_close(got, want, rtol=1e-4, atol=0, msg=tm.name)

    # and through the encoder: P · (G / sqrt(V)) from autograd, one example at a time
    def correct(name, g):
        return g / canonical_v[name].double().sqrt()

    examples = list(enc.tokenize_passages([Passage("a", "some text here"),
                                           Passage("b", "another, longer passage of text")]))
    got = {}
    for ids, p in enc.project(examples):
        got.update(zip(ids, p.double(), strict=True))
    for example in examples:
        want = reference_projection(enc, example, correct)
        assert float((got[example.id] - want).norm() / want.norm()) < 1e-4, example.id
    with pytest.raises(FactraceError, match="exp_avg_sq"):
        Encoder(loaded, EncoderConfig(dim=64, second_moment="factored", hessian="none"), state)


def test_mismatched_state_names_first_parameter_and_shapes(tmp_path):
    other = tiny_model("llama")
    opt = torch.optim.AdamW(_trainer_groups(other), lr=1e-3)
    _train(other, opt)
    torch.save(opt.state_dict(), tmp_path / "optimizer.pt")
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = other.config.to_dict()
    cfg["intermediate_size"] = 40
    wider = LlamaForCausalLM(LlamaConfig(**cfg))
    with pytest.raises(FactraceError) as e:
        load_optimizer_state(tmp_path / "optimizer.pt", wider)
    msg = str(e.value)
    assert "model.layers.0.mlp.gate_proj.weight" in msg
    assert "(40, 32)" in msg and "(48, 32)" in msg


def test_expert_count_mismatch_names_the_parameter_and_both_shapes(tmp_path):
    """A state saved from a model with 3 experts, read for the same model with 4."""
    from transformers import MixtralForCausalLM

    model = tiny_model("mixtral")
    cfg = model.config.to_dict()
    cfg["num_local_experts"] = 3
    fewer = MixtralForCausalLM(type(model.config)(**cfg))
    opt = torch.optim.AdamW(fewer.parameters(), lr=1e-3)
    _train(fewer, opt, 1)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    with pytest.raises(FactraceError) as e:
        load_optimizer_state(tmp_path / "opt.pt", model)
    msg = str(e.value)
    assert "\n" not in msg
    # the first parameter whose shape differs: the router, [experts, hidden]
    assert "'model.layers.0.mlp.gate.weight'" in msg and "(4, 32)" in msg and "(3, 32)" in msg
    # the fused experts' own: the safetensors form, without the routers
    save_file({n: torch.rand_like(p) for n, p in fewer.named_parameters() if ".experts." in n},
              tmp_path / "v.safetensors")
    with pytest.raises(FactraceError) as e:
        load_optimizer_state(tmp_path / "v.safetensors", model)
    msg = str(e.value)
    assert "\n" not in msg and "'model.layers.0.mlp.experts.down_proj'" in msg
    assert "(4, 32, 48)" in msg and "(3, 32, 48)" in msg
    # and an OptimizerState built in memory: the encoder's correction refuses it
    from factrace.model.optimizer_state import OptimizerState, ParamMoment

    moments = {n: ParamMoment(exp_avg_sq=torch.rand_like(p)) for n, p in model.named_parameters()}
    moments["model.layers.1.mlp.experts.down_proj"] = ParamMoment(exp_avg_sq=torch.rand(5, 32, 48))
    loaded = tiny_loaded("mixtral")
    for mode in ("factored", "exact"):
        with pytest.raises(FactraceError) as e:
            Encoder(loaded, EncoderConfig(dim=64, second_moment=mode, hessian="none"),
                    OptimizerState(moments, "mem"))
        msg = str(e.value)
        assert "\n" not in msg and "'model.layers.1.mlp.experts.down_proj'" in msg
        assert "(5, 32, 48)" in msg and "(4, 32, 48)" in msg


def test_missing_and_garbage_files(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(FactraceError, match="not found"):
        load_optimizer_state(tmp_path / "nope.pt", model)
    (tmp_path / "bad.pt").write_bytes(b"not a pickle")
    with pytest.raises(FactraceError, match="bad.pt"):
        load_optimizer_state(tmp_path / "bad.pt", model)
