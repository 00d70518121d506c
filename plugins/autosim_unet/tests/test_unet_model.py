"""The UNet's layout, sizes and freezing."""

import pytest
import torch
from pydantic import ValidationError

from autosim_unet.model import UNet, conv_layer_count
from autosim_unet.plugin import UNetSettings, UNetTask


def test_default_has_eight_conv_layers():
    model = UNetTask().create_model(settings=UNetSettings())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert len(convs) == 8 == conv_layer_count(1) == len(model.conv_layers())
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("shape", [(16, 16), (17, 23), (5, 9)])
def test_any_size_gives_logits_of_that_size(depth, shape):
    model = UNet(num_classes=5, depth=depth, width=2)
    out = model(torch.rand(2, 3, *shape))
    assert out.shape == (2, 5, *shape)
    assert len(model.conv_layers()) == conv_layer_count(depth)


def test_freeze_first_layers_in_forward_order():
    model = UNetTask().create_model(settings=UNetSettings(width=2, freeze=3))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {
        "encoder.0.first.conv.weight", "encoder.0.first.conv.bias",
        "encoder.0.first.norm.weight", "encoder.0.first.norm.bias",
        "encoder.0.second.conv.weight", "encoder.0.second.conv.bias",
        "encoder.0.second.norm.weight", "encoder.0.second.norm.bias",
        "encoder.1.first.conv.weight", "encoder.1.first.conv.bias",
        "encoder.1.first.norm.weight", "encoder.1.first.norm.bias",
    }


def test_settings_errors_are_clear():
    with pytest.raises(ValidationError, match="freeze"):
        UNetSettings(freeze=8)
    with pytest.raises(ValidationError, match="class_names"):
        UNetSettings(num_classes=3, class_names=["a", "b"])
    with pytest.raises(ValidationError, match="Extra inputs"):
        UNetSettings.model_validate({"widht": 3})
    assert UNetSettings(num_classes=3).class_names == ["background", "class1", "class2"]
