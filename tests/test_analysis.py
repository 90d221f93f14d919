"""compress.analysis: sparsity statistics against hand computation, and the plots."""
import pytest
import torch
import torch.nn.functional as F

import compress
from compress import analysis
from tiny import TinyForecaster, TorchEncoderForecaster, batches, zero_heads

DEAD = list(range(10))  # blocks.0 FFN channels that never fire
ALWAYS = [10, 11]       # and two that always do


def relu_model():
    model = TinyForecaster(act=F.relu)
    with torch.no_grad():
        model.blocks[0].fc1.bias[DEAD] = -1e3
        model.blocks[0].fc1.bias[ALWAYS] = 1e3
    zero_heads(model.blocks[1].attn, [2], 4)
    return model


def hand_activation_probability(model, data):
    """P(ReLU(fc1 x) > 0) per channel of each block, over every token of every batch."""
    fired = {i: [] for i in range(len(model.blocks))}
    hooks = [b.fc1.register_forward_hook(lambda m, a, out, i=i: fired[i].append((F.relu(out) > 0).reshape(-1, out.shape[-1])))
             for i, b in enumerate(model.blocks)]
    with torch.no_grad():
        for x, _ in data:
            model(x)
    for h in hooks:
        h.remove()
    return {i: torch.cat(v).float().mean(0) for i, v in fired.items()}


def test_activation_sparsity_matches_hand_computation_on_a_relu_model_with_dead_channels():
    model, data = relu_model(), batches(None, 2)
    probs = hand_activation_probability(model, data)
    got = analysis.activation_sparsity(model, data, threshold=0.05)
    assert list(got) == ["blocks.0.fc1.ffn", "blocks.1.fc1.ffn"]  # layer order
    for i in (0, 1):
        assert got[f"blocks.{i}.fc1.ffn"] == float((probs[i] < 0.05).float().mean())
    assert got["blocks.0.fc1.ffn"] >= len(DEAD) / 32
    p = analysis.activation_probability(model, data)["blocks.0.fc1.ffn"]
    torch.testing.assert_close(p, probs[0])
    assert (p[DEAD] == 0).all() and (p[ALWAYS] == 1).all()


def test_head_output_norms_match_hand_computation():
    model, data = relu_model(), batches(None, 1)
    x, _ = data[0]
    seen = {}
    attn = model.blocks[1].attn
    h1 = attn.register_forward_pre_hook(lambda m, a: seen.__setitem__("in", a[0]))
    h2 = attn.out_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("z", a[0]))
    with torch.no_grad():
        model(x)
    h1.remove(), h2.remove()
    z, W = seen["z"].reshape(-1, 16), attn.out_proj.weight  # [T, h*dv], [d, h*dv]
    expect = torch.stack([(z[:, h * 4:(h + 1) * 4] @ W[:, h * 4:(h + 1) * 4].T).norm(dim=-1).mean() for h in range(4)])
    expect = expect / seen["in"].norm(dim=-1).mean()
    got = analysis.head_output_norms(model, data)
    assert list(got) == ["blocks.0.attn.heads", "blocks.1.attn.heads"]
    torch.testing.assert_close(got["blocks.1.attn.heads"], expect.detach(), rtol=1e-5, atol=1e-7)
    assert got["blocks.1.attn.heads"][2] == 0


def test_importance_distribution_gives_every_unit_a_score_and_dead_channels_zero():
    model, data = relu_model(), batches(None, 2)
    scores = analysis.importance_distribution(model, data)
    assert {k: v.shape[0] for k, v in scores.items()} == {
        "blocks.0.attn.heads": 4, "blocks.1.attn.heads": 4, "blocks.0.fc1.ffn": 32, "blocks.1.fc1.ffn": 32}
    assert (scores["blocks.0.fc1.ffn"][DEAD] == 0).all()  # no gradient through a dead ReLU
    mag = analysis.importance_distribution(model, data, criterion="magnitude", units=("ffn",))
    assert set(mag) == {"blocks.0.fc1.ffn", "blocks.1.fc1.ffn"} and (mag["blocks.1.fc1.ffn"] > 0).all()


def test_analyses_leave_the_model_untouched():
    model = TorchEncoderForecaster()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    analysis.head_output_norms(model, batches(None, 1))
    assert isinstance(model.encoder.layers[0].self_attn, torch.nn.MultiheadAttention)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_plots_write_png_files(tmp_path):
    pytest.importorskip("matplotlib")
    model, data = relu_model(), batches(None, 1)
    paths = [
        analysis.plot_activation_sparsity(analysis.activation_sparsity(model, data), tmp_path / "a" / "sparsity.png"),
        analysis.plot_head_norms(analysis.head_output_norms(model, data), tmp_path / "heads.png"),
        analysis.plot_importance(analysis.importance_distribution(model, data), tmp_path / "importance.png"),
    ]
    for p in paths:
        assert p.exists() and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analysis_is_reachable_lazily_from_the_package():
    assert compress.analysis is analysis


def _ttm_tiny():
    model = compress.models.load("ttm", size="tiny")
    data = compress.data.load("ETTh1", model.context_length, model.horizon, "val").batches(4, limit=1)
    return model, data


def test_when_a_model_has_no_attention_heads_then_the_ffn_analyses_work_and_the_head_one_explains():
    model, data = _ttm_tiny()  # TTM: an MLP-Mixer, FFN channels but no attention
    sparsity = analysis.activation_sparsity(model, data)
    assert sparsity and all(0 <= v <= 1 for v in sparsity.values())
    scores = analysis.importance_distribution(model, data)  # default units ("ffn", "heads"): the FFNs only
    assert set(scores) == set(sparsity) and all(name.endswith(".ffn") for name in scores)
    with pytest.raises(compress.graph.GraphBuildError) as e:
        analysis.head_output_norms(model, data)
    msg = str(e.value)
    assert "TTMForecaster has no attention heads" in msg and "importance_distribution(units=('ffn',))" in msg


def test_when_plotting_long_layer_names_then_labels_are_short_distinct_unclipped_and_nothing_warns(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    import warnings

    model, data = _ttm_tiny()
    sparsity = analysis.activation_sparsity(model, data)
    assert max(len(n) for n in sparsity) > 60  # the group names are long
    figures = []
    save = analysis._save
    monkeypatch.setattr(analysis, "_save", lambda fig, path: (figures.append(fig), save(fig, path))[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analysis.plot_activation_sparsity(sparsity, tmp_path / "s.png")
        analysis.plot_importance(analysis.importance_distribution(model, data), tmp_path / "i.png")
        analysis.plot_head_norms({f"model.encoder.layers.{i}.self_attn.heads": torch.rand(4) for i in range(12)},
                                 tmp_path / "h.png")
    assert [str(w.message) for w in caught] == []
    for fig in figures:
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
        canvas.draw()  # the layout as saved (constrained layout runs at draw time)
        renderer = canvas.get_renderer()
        box = fig.bbox
        for ax in fig.axes:  # everything drawn (tick labels, axis labels, title) lies inside the image
            ext = ax.get_tightbbox(renderer)
            assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1 and ext.y0 >= box.y0 - 1 and ext.y1 <= box.y1 + 1, ext
    labels = [t.get_text() for t in figures[0].axes[0].get_xticklabels()]
    assert len(set(labels)) == len(labels) == len(sparsity) and max(map(len, labels)) <= 28


def test_short_names_keep_names_distinct():
    names = [f"model.backbone.encoder.mixers.{i}.mixer_layers.{j}.{k}.mlp.fc1.ffn"
             for i in range(2) for j in range(2) for k in ("patch_mixer", "feature_mixer")]
    labels, prefix = analysis.short_names(names)
    assert len(set(labels)) == len(names) and prefix == "model.backbone.encoder.mixers"
    assert labels[:2] == ["0.0.patch_mixer", "0.0.feature_mixer"]
