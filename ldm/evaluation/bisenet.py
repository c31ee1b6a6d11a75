"""BiSeNet face parser (the face-parsing.PyTorch network trained on CelebAMask-HQ), without torchvision.

Module names follow its released weight file ``79999_iter.pth`` (``cp.resnet.layer1.0.conv1.weight``,
``cp.arm16.conv_atten.weight``, ``ffm.convblk.conv.weight``, ``conv_out.conv_out.weight`` [19, 256, 1, 1],
...), so that file loads strictly. As released, the spatial path is replaced by the ResNet-18's 1/8-scale
features, and only the main output (``conv_out``) is used at test time; the two auxiliary heads
(``conv_out16``, ``conv_out32``) are built so the file loads.

Input: RGB in [-1, 1]; it is resized to 512x512 (bilinear) and normalised with the ImageNet statistics,
as the network was trained. Output: logits [B, 19, H, W] at the input size, **in the released class order**
of this package (``ldm.data.masks.CLASS_NAMES``): the network's own order (``BISENET_CLASS_NAMES``) is
remapped by :data:`BISENET_TO_RELEASED`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ldm.data.masks import CLASS_NAMES

# The network's output order (face-parsing.PyTorch, CelebAMask-HQ part list with background first).
BISENET_CLASS_NAMES = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r",
    "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)  # fmt: skip
# BISENET_TO_RELEASED[k] = released class id of the network's channel k.
BISENET_TO_RELEASED = tuple(CLASS_NAMES.index(name) for name in BISENET_CLASS_NAMES)
INPUT_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ConvBNReLU(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int = 3, stride: int = 1, padding: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


# ---- ResNet-18 trunk -------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if cin != cout or stride != 1:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        residual = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(shortcut + residual)


class ResNet18(nn.Module):
    """Returns the features at 1/8, 1/16 and 1/32 of the input size (128, 256, 512 channels)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        widths = [(64, 64, 1), (64, 128, 2), (128, 256, 2), (256, 512, 2)]
        for i, (cin, cout, stride) in enumerate(widths, start=1):
            self.add_module(f"layer{i}", nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), kernel_size=3, stride=2, padding=1)
        feat8 = self.layer2(self.layer1(x))
        feat16 = self.layer3(feat8)
        return feat8, feat16, self.layer4(feat16)


# ---- context path and fusion ---------------------------------------------------------------------------


class AttentionRefinement(nn.Module):
    """conv, then a channel attention from the global average: feat * sigmoid(BN(1x1(avg(feat))))."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, cout)
        self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn_atten = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        feat = self.conv(x)
        attention = torch.sigmoid(self.bn_atten(self.conv_atten(F.adaptive_avg_pool2d(feat, 1))))
        return feat * attention


class ContextPath(nn.Module):
    def __init__(self):
        super().__init__()
        self.resnet = ResNet18()
        self.arm16 = AttentionRefinement(256, 128)
        self.arm32 = AttentionRefinement(512, 128)
        self.conv_head32 = ConvBNReLU(128, 128)
        self.conv_head16 = ConvBNReLU(128, 128)
        self.conv_avg = ConvBNReLU(512, 128, kernel_size=1, padding=0)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        feat8, feat16, feat32 = self.resnet(x)
        global_context = self.conv_avg(F.adaptive_avg_pool2d(feat32, 1))  # [B, 128, 1, 1]
        up32 = self.arm32(feat32) + global_context
        up32 = self.conv_head32(F.interpolate(up32, size=feat16.shape[2:], mode="nearest"))
        up16 = self.arm16(feat16) + up32
        up16 = self.conv_head16(F.interpolate(up16, size=feat8.shape[2:], mode="nearest"))
        return feat8, up16, up32  # 1/8, 1/8, 1/16


class FeatureFusion(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.convblk = ConvBNReLU(cin, cout, kernel_size=1, padding=0)
        self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
        self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

    def forward(self, spatial: Tensor, context: Tensor) -> Tensor:
        feat = self.convblk(torch.cat([spatial, context], dim=1))
        attention = torch.sigmoid(self.conv2(F.relu(self.conv1(F.adaptive_avg_pool2d(feat, 1)))))
        return feat + feat * attention


class BiSeNetOutput(nn.Module):
    def __init__(self, cin: int, mid: int, num_classes: int):
        super().__init__()
        self.conv = ConvBNReLU(cin, mid)
        self.conv_out = nn.Conv2d(mid, num_classes, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_out(self.conv(x))


class BiSeNet(nn.Module):
    """Images [B, 3, H, W] in [-1, 1] -> logits [B, 19, H, W] in the released class order."""

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.cp = ContextPath()
        self.ffm = FeatureFusion(256, 256)
        self.conv_out = BiSeNetOutput(256, 256, num_classes)
        self.conv_out16 = BiSeNetOutput(128, 64, num_classes)  # auxiliary training heads, unused
        self.conv_out32 = BiSeNetOutput(128, 64, num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def network_logits(self, x: Tensor) -> Tensor:
        """The network's own output for normalised input [B, 3, h, w]: logits in its class order, at h x w."""
        feat8, context8, _ = self.cp(x)
        logits = self.conv_out(self.ffm(feat8, context8))
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=True)

    def forward(self, images: Tensor, input_size: int = INPUT_SIZE) -> Tensor:
        h, w = images.shape[2:]
        x = F.interpolate((images + 1) / 2, size=(input_size, input_size), mode="bilinear", align_corners=False)
        logits = self.network_logits((x - self.mean) / self.std)
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
        released = torch.empty_like(logits)
        released[:, list(BISENET_TO_RELEASED)] = logits  # channel k of the network -> its released class id
        return released
