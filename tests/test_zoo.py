"""Every registered architecture: builds as genetic and dense twin, runs forward/backward, counts match."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gee_deploy import create_model, list_models
from gee_deploy.errors import UnknownModelError
from gee_deploy.zoo.summary import count_parameters, parameter_table


def small_kwargs(name: str) -> dict:
    """Shrink inputs so each architecture runs in well under a second."""
    size = 28 if name == "smallnet" else 32
    return {"timesteps": 2, "num_classes": 5, "image_size": size}


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("genes", [None, 4])
def test_forward_backward_shapes(name, genes):
    torch.manual_seed(0)
    model = create_model(name, genes=genes, **small_kwargs(name)).train()
    x = torch.rand(2, model.in_channels, model.image_size, model.image_size)
    steps = model.forward_steps(x)
    assert steps.shape == (2, 2, 5)  # [T, N, classes]
    logits = model(x)
    assert logits.shape == (2, 5)
    torch.testing.assert_close(logits, model.forward_steps(x).mean(0))
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.model_name == name and model.model_args["genes"] == genes


@pytest.mark.parametrize("name", list_models())
def test_wrong_input_shape_is_named(name):
    model = create_model(name, genes=4, **small_kwargs(name))
    with pytest.raises(ValueError, match="expected input"):
        model(torch.rand(2, model.in_channels + 1, model.image_size, model.image_size))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, model.in_channels, model.image_size, model.image_size, dtype=torch.uint8))


# Dense counts of the architectures the paper compares against (Tables I and II), in millions.
PAPER_DENSE_M = {"resnet34": 21.79, "vgg16": 33.6, "vgg11": 9.27, "resnet19": 12.63}


@pytest.mark.parametrize("name", sorted(PAPER_DENSE_M))
def test_dense_twins_match_the_papers_parameter_counts(name):
    dense = count_parameters(create_model(name, genes=None))
    assert dense / 1e6 == pytest.approx(PAPER_DENSE_M[name], rel=0.01)


def test_genetic_models_compress_at_the_papers_gene_count():
    rows = {r["model"]: r for r in parameter_table(["resnet19", "vgg16", "smallnet"])}
    assert rows["resnet19"]["genetic_params"] / 1e6 == pytest.approx(4.35, rel=0.05)  # Table II: 4.35/4.38 M
    assert all(r["ratio"] < 0.5 for r in rows.values())


def test_create_model_errors_and_none_dropping():
    with pytest.raises(UnknownModelError, match="unknown model 'nope'"):
        create_model("nope")
    with pytest.raises(UnknownModelError, match="takes no argument"):
        create_model("smallnet", width=3)
    model = create_model("smallnet", timesteps=None, genes=0)  # None = keep default; genes 0 = dense twin
    assert model.timesteps == 4 and model.genes is None


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
@pytest.mark.parametrize("size", [7, 8, 14])
@pytest.mark.parametrize("genes", [None, 4])
def test_conv_pool_equals_conv_then_average_pool(kernel_size, size, genes):
    """The fused stride-2 conv gives the values and the gradients of the conv followed by 2x2 pooling."""

    from gee_deploy.genetic import LayerFactory
    from gee_deploy.zoo.base import ConvPool

    torch.manual_seed(0)
    f = LayerFactory(genes)
    f.population("a", 3, taps=kernel_size ** 2)
    f.population("b", 5, taps=kernel_size ** 2)
    fused = ConvPool(f.conv("a", "b", kernel_size)).double()
    x = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
    y = fused(x)
    ref = nn.functional.avg_pool2d(fused[0](x), 2)
    assert y.shape == ref.shape == (2, 5, size // 2, size // 2)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-12)
    params = [x] + list(fused.parameters())
    grads = torch.autograd.grad((y * ref.detach()).sum(), params)
    ref_grads = torch.autograd.grad((ref * ref.detach()).sum(), params)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-10)


def test_conv_pool_rejects_convs_it_cannot_fuse():

    from gee_deploy.zoo.base import ConvPool

    for conv in (nn.Conv2d(2, 2, 3, stride=2, padding=1), nn.Conv2d(2, 2, 3, padding=0), nn.Conv2d(2, 2, 2),
                 nn.Conv2d(2, 2, 3, padding=1, groups=2), nn.Conv2d(2, 2, 3, padding=1, dilation=2),
                 nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")):
        with pytest.raises(ValueError, match="ConvPool needs"):
            ConvPool(conv)


def test_smallnet_widths_and_hidden_are_recipe_arguments():
    """Wider SmallNets keep the genetic model's parameters linear in width while the dense twin's grow quadratically."""
    from gee_deploy.recipe import recipe_from_dict
    from gee_deploy.training.setup import build_recipe_model

    recipe = recipe_from_dict({"model": {"name": "smallnet", "genes": 8, "args": {"widths": [8, 16, 24], "hidden": 40}},
                               "data": {"name": "synthetic"}})
    model = build_recipe_model(recipe)
    assert [m.out_channels for m in model.modules() if hasattr(m, "out_channels")][:4] == [8, 16, 24, 40]
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    narrow, wide = (count_parameters(create_model("smallnet", genes=16, widths=w, hidden=h))
                    for w, h in [((16, 32, 64), 128), ((32, 64, 128), 256)])
    narrow_dense, wide_dense = (count_parameters(create_model("smallnet", genes=None, widths=w, hidden=h))
                                for w, h in [((16, 32, 64), 128), ((32, 64, 128), 256)])
    assert wide / narrow < 2.1 and wide_dense / narrow_dense > 3.5


@pytest.mark.parametrize("args, message", [
    ({"widths": [8, 16]}, "widths must be 3 integers >= 1"),
    ({"widths": [8, 0, 16]}, "widths must be 3 integers >= 1"),
    ({"widths": "wide"}, "widths must be 3 integers >= 1"),
    ({"hidden": 0}, "hidden must be an integer >= 1"),
])
def test_smallnet_refuses_bad_widths_in_one_line(args, message):
    from gee_deploy.errors import ConfigError
    from gee_deploy.recipe import recipe_from_dict
    from gee_deploy.training.setup import build_recipe_model

    recipe = recipe_from_dict({"model": {"name": "smallnet", "args": args}, "data": {"name": "synthetic"}})
    with pytest.raises(ConfigError, match=f"cannot build 'smallnet': {message}"):
        build_recipe_model(recipe)


def test_resnet19_and_vgg11_take_narrow_widths_for_28x28_inputs():
    """model.args.widths narrows ResNet-19 (three stages, stem = first) and VGG-11 (eight convs) at equal depth;
    VGG-11 skips the pool that a 28x28 map has no room for."""
    resnet = create_model("resnet19", genes=4, timesteps=1, in_channels=1, image_size=28, widths=(8, 16, 32),
                          hidden=32)
    vgg = create_model("vgg11", genes=4, timesteps=1, in_channels=1, image_size=28,
                       widths=(8, 16, 32, 32, 64, 64, 64, 64))
    for model, channels, depth in [(resnet, [8, 16, 32], 19), (vgg, [8, 16, 32, 64], 8)]:  # 17 3x3 + 2 1x1
        convs = [m for m in model.modules() if hasattr(m, "out_channels") and hasattr(m, "kernel_size")]
        assert sorted({c.out_channels for c in convs}) == channels and len(convs) == depth
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in create_model("vgg11", genes=4, timesteps=1).modules()) == 5
    with pytest.raises(ValueError, match="widths must be 8 integers >= 1"):
        create_model("vgg11", genes=4, widths=(8, 16))
    with pytest.raises(ValueError, match="hidden must be an integer >= 1"):
        create_model("resnet19", genes=4, hidden=0)
