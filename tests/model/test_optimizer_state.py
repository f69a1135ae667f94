"""Optimizer state files: HF Trainer optimizer.pt, plain AdamW, safetensors, Adafactor."""

import pytest
import torch
from safetensors.torch import save_file

from factrace.config import EncoderConfig
from factrace.data.records import Passage
from factrace.encode.encoder import Encoder
from factrace.errors import FactraceError
from factrace.model.optimizer_state import load_optimizer_state, restore_adamw
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


def test_adafactor_factored_state(tmp_path):
    model = tiny_model("llama")
    opt = torch.optim.Adafactor(model.parameters(), lr=1e-2)
    _train(model, opt)
    torch.save(opt.state_dict(), tmp_path / "ada.pt")
    state = load_optimizer_state(tmp_path / "ada.pt", model)
    m = state["model.layers.0.mlp.down_proj.weight"]
    assert m.row is not None and m.col is not None and m.exp_avg_sq is None
    loaded = tiny_loaded("llama")
    loaded.model.load_state_dict(model.state_dict())
    enc = Encoder(loaded, EncoderConfig(dim=64, second_moment="adafactor", hessian="none"), state)
    _, psi = enc.encode_passages([Passage("a", "some text here")])
    assert torch.isfinite(psi).all()
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


def test_missing_and_garbage_files(tmp_path):
    model = tiny_model("llama")
    with pytest.raises(FactraceError, match="not found"):
        load_optimizer_state(tmp_path / "nope.pt", model)
    (tmp_path / "bad.pt").write_bytes(b"not a pickle")
    with pytest.raises(FactraceError, match="bad.pt"):
        load_optimizer_state(tmp_path / "bad.pt", model)
