"""Feature extractors for observations SB3's defaults do not fit."""

from __future__ import annotations

import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor


class GridCNN(BaseFeaturesExtractor):
    """Stride-1 convolutions with ReLU, then one linear layer with ReLU, for small grid
    images. The two presets' networks below are this with fixed shapes; their class names
    stay importable because run directories store them.

    Args:
        observation_space: channel-first image space (SB3 transposes channel-last images).
        features_dim: size of the output feature vector.
        channels: output channels of each convolution, in order.
        kernel_size: the convolutions' square kernel.
    """

    def __init__(
        self,
        observation_space: spaces.Box,
        features_dim: int = 64,
        channels: tuple[int, ...] = (16, 32),
        kernel_size: int = 3,
    ):
        super().__init__(observation_space, features_dim)
        layers: list[torch.nn.Module] = []
        n_in = observation_space.shape[0]
        for n_out in channels:
            layers += [torch.nn.Conv2d(n_in, n_out, kernel_size=kernel_size), torch.nn.ReLU()]
            n_in = n_out
        self.cnn = torch.nn.Sequential(*layers, torch.nn.Flatten())
        with torch.no_grad():
            sample = torch.as_tensor(observation_space.sample()[None]).float()
            n_flat = self.cnn(sample).shape[1]
        self.linear = torch.nn.Sequential(torch.nn.Linear(n_flat, features_dim), torch.nn.ReLU())

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.linear(self.cnn(observations))


class SmallImageCNN(GridCNN):
    """Three 2×2 convolutions (16, 32, 64 filters) and a linear layer, for tiny grid images
    (MiniGrid's 7×7×3).

    SB3's NatureCNN uses 8×8 stride-4 kernels and needs images of at least 36×36; a
    7×7 egocentric MiniGrid view would vanish under its first layer.
    """

    def __init__(self, observation_space: spaces.Box, features_dim: int = 64):
        super().__init__(observation_space, features_dim, channels=(16, 32, 64), kernel_size=2)


class PaperGridCNN(GridCNN):
    """The IIF paper's MiniGrid network: two 3×3 convolutions (16 and 32 filters, stride 1,
    ReLU) and a linear layer of ``features_dim`` units (64 in the paper's runs).

    Source: arXiv 2505.19281 (appendix) and its public code (LDAORL/LDA-ORL,
    traditional-rl/minigrid: a custom extractor with these layers, features_dim 64).
    On MiniGrid's 7×7 view the feature maps are 5×5 and 3×3 (288 inputs to the linear).
    """

    def __init__(self, observation_space: spaces.Box, features_dim: int = 64):
        super().__init__(observation_space, features_dim, channels=(16, 32), kernel_size=3)
