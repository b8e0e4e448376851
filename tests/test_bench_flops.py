"""FLOP formulas of bench/flops.py against hand counts at tiny sizes."""

from bench.flops import (
    DiTSizes,
    dit_block_flops,
    dit_calls,
    dit_encoder_kv_flops,
    dit_step_flops,
    umt5_flops,
)

TINY = {
    "num_attention_heads": 2,
    "attention_head_dim": 2,  # D = 4
    "mlp_ratio": 2.5,  # F = 10
    "num_layers": 1,
    "in_channels": 2,
    "patch_size": [2, 1],  # proj_in hidden = 2 * 256 = 512
    "lyric_hidden_size": 8,
    "text_embedding_dim": 6,
    "speaker_embedding_dim": 5,
}


def test_dit_block_hand_count():
    # T = 3 frames, L = 2 encoder tokens, D = 4, H = 2, Dh = 2, F = 10
    parts = dit_block_flops(DiTSizes.from_config(TINY), T=3, L=2)
    assert parts == {
        "self_attn_qkvo": 4 * (2 * 3 * 4 * 4),  # 384
        "self_attn_core": 2 * (2 * 2 * 3 * 3 + 2 * 3 * 2 * 3),  # 144
        "cross_attn_qo": 2 * (2 * 3 * 4 * 4),  # 192
        "cross_attn_core": 2 * (2 * 3 * 2 * 2 + 2 * 3 * 2 * 2),  # 96
        "ff": 2 * 3 * 4 * 20 + 2 * 3 * 3 * 20 + 2 * 3 * 10 * 4,  # 480 + 360 + 240
    }


def test_dit_step_total_and_batch():
    f = dit_step_flops(TINY, T=3, L=2)
    # block 1896 + proj_in 12288 + 12288 + timestep 2048 + 32 + 192 + final layer 96
    assert f["total"] == 28840
    assert dit_step_flops(TINY, T=3, L=2, batch=2)["total"] == 2 * 28840
    assert dit_encoder_kv_flops(TINY, L=2) == 2 * (2 * 2 * 4 * 4)


def test_umt5_hand_count():
    cfg = {"d_model": 4, "num_heads": 2, "d_kv": 2, "d_ff": 6, "num_layers": 1}
    # q,k,v 288 + o 96 + scores 72 + values 72 + wi_0, wi_1 288 + wo 144
    assert umt5_flops(cfg, 3) == 960


def test_guidance_call_counts():
    assert dit_calls(60) == {"batch1": 30, "batch2": 30}  # guided steps 15..44
    assert dit_calls(27) == {"batch1": 13, "batch2": 14}  # guided steps 6..19
    assert dit_calls(27, guided=False) == {"batch1": 27, "batch2": 0}


def test_real_size_step_is_linear_in_T():
    from bench.common import full_config

    cfg = full_config("dit")
    a, b = (dit_step_flops(cfg, T, 320)["total"] for T in (322, 644))
    c = dit_step_flops(cfg, 0, 320)["total"]  # the T-independent timestep MLPs
    assert b - c == 2 * (a - c)
    assert 1.40e12 < a < 1.42e12


def test_module_counter_hand_count():
    import mlx.core as mx
    import mlx.nn as nn

    from bench.flops import count_module_flops

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 4)  # [1, 5, 3] -> [1, 5, 4]: 2 * 20 * 3 = 120
            self.conv = nn.Conv1d(4, 4, 3, padding=1)  # 2 * 20 * 3 * 4 = 480
            self.dw = nn.Conv1d(4, 4, 3, padding=1, groups=4)  # 2 * 20 * 3 = 120
            self.up = nn.ConvTranspose1d(4, 2, 4, stride=2)  # per input: 2 * 20 * 2 * 4 = 320

        def __call__(self, x):
            return self.up(self.dw(self.conv(self.lin(x))))

    net = Net()
    assert count_module_flops(net, lambda: net(mx.zeros((1, 5, 3)))) == 120 + 480 + 120 + 320
