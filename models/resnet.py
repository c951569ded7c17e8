"""CIFAR ResNet-18 by hand (He et al. 2016) with the report's module names: 3x3 stride-1 stem, no
max-pool, so layer4 sees 4x4 at 32x32 (docs/parts.md, part (a)). Dropout places: docs/parts.md's
dropout sweep; at rate 0 no dropout module is created, so the network is exactly the plain one."""
import torch.nn as nn
import torch.nn.functional as F

DROPOUT_PLACES = ("classifier", "stage", "block")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1, dropout=0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        if dropout > 0:
            self.dropout = nn.Dropout2d(dropout)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            # Projection shortcut: the identity cannot be added when the shape changes.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        if hasattr(self, "dropout"):
            out = self.dropout(out)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, num_blocks=(2, 2, 2, 2), num_classes=10, width=64,
                 dropout=0.0, dropout_at=("classifier",)):
        super().__init__()
        unknown = set(dropout_at) - set(DROPOUT_PLACES)
        if unknown:
            raise ValueError(f"unknown dropout place(s) {sorted(unknown)}; choose from {DROPOUT_PLACES}")
        block_dropout = dropout if "block" in dropout_at else 0.0
        stage_dropout = dropout if "stage" in dropout_at else 0.0
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = self._make_layer(width, num_blocks[0], 1, block_dropout, stage_dropout)
        self.layer2 = self._make_layer(2 * width, num_blocks[1], 2, block_dropout, stage_dropout)
        self.layer3 = self._make_layer(4 * width, num_blocks[2], 2, block_dropout, stage_dropout)
        self.layer4 = self._make_layer(8 * width, num_blocks[3], 2, block_dropout, stage_dropout)
        if "classifier" in dropout_at and dropout > 0:
            self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(8 * width, num_classes)

    def _make_layer(self, planes, num_blocks, stride, block_dropout, stage_dropout):
        layers = []
        for block_stride in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride, block_dropout))
            self.in_planes = planes
        if stage_dropout > 0:
            layers.append(nn.Dropout2d(stage_dropout))
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        out = out.mean(dim=(2, 3))  # global average pool (deterministic backward on CUDA)
        if hasattr(self, "dropout"):
            out = self.dropout(out)
        return self.linear(out)


def resnet18(num_classes=10, width=64, dropout=0.0, dropout_at=("classifier",)):
    return ResNet((2, 2, 2, 2), num_classes, width, dropout, dropout_at)
