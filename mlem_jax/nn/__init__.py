"""Neural networks for diffusion models: an Equinox UNet and width ladders."""

from .._cost import count_flops as count_flops  # the method layer's, for networks too
from ._ladder import count_params as count_params, unet_ladder as unet_ladder
from ._unet import (
    AttentionBlock as AttentionBlock,
    ResBlock as ResBlock,
    UNet as UNet,
    conv_hwc as conv_hwc,
    group_norm_hwc as group_norm_hwc,
    sinusoidal_embedding as sinusoidal_embedding,
)
