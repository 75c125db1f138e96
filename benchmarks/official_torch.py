"""The official RIDE CIFAR train step, restated in PyTorch: the speed reference.

``benchmarks/vs_pytorch.py`` times ride_jax's train step against this one. It is the
official code's computation (``model/ldam_drw_resnets/ride_resnet_cifar.py``
``ResNet32Model``, ``model/loss.py`` ``RIDELoss``, ``torch.optim.SGD``), written out here
because the official repository is not a package. :func:`check_against_fixture` shows
it computes what the official code computed: the logits, the RIDE loss, every gradient
and the BatchNorm running statistics of ``tests/data/official_ride_resnet32_c10_e2.npz``
(made by the official code, float64).

Needs torch (not a ride_jax dependency): ``pip install torch``, a CPU build is enough.
Nothing here imports jax.
"""

from __future__ import annotations

import math
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

FIXTURE = (pathlib.Path(__file__).resolve().parents[1] / "tests" / "data"
           / "official_ride_resnet32_c10_e2.npz")


class NormedLinear(nn.Module):
    """Cosine classifier; ``weight``: [in, out] (transposed against nn.Linear)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.Tensor(in_features, out_features))
        self.weight.data.uniform_(-1, 1).renorm_(2, 1, 1e-5).mul_(1e5)

    def forward(self, x):
        return F.normalize(x, dim=1).mm(F.normalize(self.weight, dim=0))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, option-A shortcut (subsample, zero-pad channels), ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = (planes - in_planes) // 2 if (stride != 1 or in_planes != planes) else None

    def shortcut(self, x):
        if self.pad is None:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad), "constant", 0)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


def _weights_init(m):
    if isinstance(m, (nn.Linear, nn.Conv2d)):
        nn.init.kaiming_normal_(m.weight)


class RIDEResNet32(nn.Module):
    """``ResNet32Model(num_experts=E, reduce_dimension=True, use_norm=True)``'s backbone:
    shared stem + layer1 (16), per-expert layer2 (24) / layer3 (48) / NormedLinear x 30.

    ``forward(x: [B, 3, 32, 32])`` -> (mean logits [B, C], expert logits list of E x [B, C]).
    """

    def __init__(self, num_classes: int = 100, num_experts: int = 3):
        super().__init__()
        self.s = 30
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, 16, 1)
        self.layer2s = nn.ModuleList([self._make_layer(16, 24, 2) for _ in range(num_experts)])
        self.layer3s = nn.ModuleList([self._make_layer(24, 48, 2) for _ in range(num_experts)])
        self.apply(_weights_init)
        self.linears = nn.ModuleList([NormedLinear(48, num_classes) for _ in range(num_experts)])

    @staticmethod
    def _make_layer(in_planes, planes, stride, blocks=5):
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(in_planes, planes, s))
            in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        outs = []
        for layer2, layer3, linear in zip(self.layer2s, self.layer3s, self.linears):
            h = layer3(layer2(out))
            h = F.avg_pool2d(h, h.size()[3]).view(h.size(0), -1)
            outs.append(linear(h) * self.s)
        return torch.stack(outs, dim=1).mean(dim=1), outs


class RIDELoss:
    """``RIDELoss`` after its ``_hook_before_epoch(epoch)``, CIFAR config (max_m 0.5, s 30,
    DRW beta 0.9999, diversity temperature 1.0); ``counts``: training images per class."""

    def __init__(self, counts, epoch: int = 170, reweight_epoch: int = 160,
                 diversity_factor: float = -0.45, reweight_factor: float = 0.05,
                 dtype=torch.float32):
        counts = np.asarray(counts, dtype=np.float64)
        m = 1.0 / np.sqrt(np.sqrt(counts))
        self.m_list = torch.tensor(m * (0.5 / m.max()), dtype=dtype)
        self.s = 30
        self.diversity_factor = diversity_factor
        if epoch > reweight_epoch:
            beta = 0.9999
            w = (1.0 - beta) / (1.0 - np.power(beta, counts))
            w = w / w.sum() * len(counts)
            self.weights = torch.tensor(w, dtype=dtype)
            b = reweight_factor * len(counts) * counts / counts.sum() + 1 - reweight_factor
            self.temperature = torch.tensor(b / b.max(), dtype=dtype).view(1, -1)
        else:
            self.weights, self.temperature = None, 1.0

    def to(self, device):
        """Moves the class vectors to ``device`` (the official code builds them with .cuda())."""
        self.m_list = self.m_list.to(device)
        if self.weights is not None:
            self.weights = self.weights.to(device)
            self.temperature = self.temperature.to(device)
        return self

    def _margin(self, x, target):
        index = torch.zeros_like(x, dtype=torch.uint8)
        index.scatter_(1, target.data.view(-1, 1), 1)
        batch_m = torch.matmul(self.m_list[None, :], index.to(x.dtype).transpose(0, 1))
        return torch.where(index.bool(), x - batch_m.view(-1, 1) * self.s, x)

    def __call__(self, output, expert_logits, target):
        loss = 0
        for logits in expert_logits:
            ce_logits = output if self.diversity_factor == 0 else logits
            loss = loss + F.cross_entropy(self._margin(ce_logits, target), target,
                                          weight=self.weights)
            # As the official code: a host sync per expert for the mean temperature.
            t_mean = (self.temperature.mean().item() if torch.is_tensor(self.temperature)
                      else self.temperature)
            output_dist = F.log_softmax(logits / self.temperature, dim=1)
            with torch.no_grad():
                mean_output_dist = F.softmax(output / self.temperature, dim=1)
            loss = loss + (self.diversity_factor * t_mean * t_mean
                           * F.kl_div(output_dist, mean_output_dist, reduction="batchmean"))
        return loss


def cifar100_lt_counts(imb_factor: float = 0.01, num_classes: int = 100,
                       img_max: int = 500) -> list[int]:
    """``IMBALANCECIFAR100.get_img_num_per_cls('exp', 0.01)``."""
    return [int(img_max * imb_factor ** (i / (num_classes - 1.0))) for i in range(num_classes)]


def make_train_step(num_experts: int = 3, batch: int = 128, num_classes: int = 100,
                    channels_last: bool = False, seed: int = 0, device: str = "cpu"):
    """The official trainer's step on fixed random images: ``run(steps)`` -> images/s.

    Forward in train mode, RIDE loss (CIFAR-100-LT, epoch 170: margins, DRW weights,
    class temperatures, lambda -0.45), ``zero_grad``, ``backward``, SGD (lr 0.1, momentum
    0.9, nesterov, weight decay 5e-4) and ``loss.item()`` as the trainer logs it.
    ``channels_last``: NHWC memory format (not what the official code does). ``device``:
    a torch device (``"cuda"`` as the official trainer runs on a GPU); the per-step
    ``loss.item()`` waits for the device, so the wall time is the device's.
    """
    torch.manual_seed(seed)
    model = RIDEResNet32(num_classes, num_experts).train().to(device)
    criterion = RIDELoss(cifar100_lt_counts(num_classes=num_classes))
    criterion.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4,
                                nesterov=True)
    images = torch.randn(batch, 3, 32, 32).to(device)
    labels = torch.randint(0, num_classes, (batch,)).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)

    def run(steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            output, expert_logits = model(images)
            loss = criterion(output, expert_logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            value = loss.item()
        rate = steps * batch / (time.perf_counter() - t0)
        if not math.isfinite(value):
            raise FloatingPointError("non-finite loss")
        return rate
    return run


def check_against_fixture(path=FIXTURE) -> dict[str, float]:
    """Worst relative error of this restatement against the official code's numbers.

    Loads the fixture's state dict into a float64 2-expert CIFAR-10 model and compares
    train- and eval-mode logits, the RIDE loss at epoch 170, every parameter gradient and
    the BN running statistics after the train forward. Returns {what: max |a - b| /
    max |b|}.
    """
    data = np.load(path)
    model = RIDEResNet32(num_classes=10, num_experts=2).double()
    sd = {k[len("sd/backbone."):]: torch.from_numpy(np.asarray(data[k]))
          for k in data.files if k.startswith("sd/")}
    model.load_state_dict(sd)
    x = torch.from_numpy(data["input_nchw"]).double()
    y = torch.from_numpy(data["targets"]).long()

    def rel(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))

    errors = {}
    model.eval()
    with torch.no_grad():
        mean, experts = model(x)
    errors["eval_mean_logits"] = rel(mean.numpy(), data["eval_mean_logits"])
    errors["eval_expert_logits"] = rel(torch.stack(experts).numpy(), data["eval_expert_logits"])

    model.train()
    mean, experts = model(x)
    errors["train_mean_logits"] = rel(mean.detach().numpy(), data["train_mean_logits"])
    errors["train_expert_logits"] = rel(torch.stack(experts).detach().numpy(),
                                        data["train_expert_logits"])
    loss = RIDELoss(data["counts"], epoch=170, dtype=torch.float64)(mean, experts, y)
    errors["ride_loss_epoch170"] = rel(loss.item(), data["train_ride_loss_epoch170"])
    loss.backward()
    grads = dict(model.named_parameters())
    keys = [k for k in data.files if k.startswith("grad/")]
    if len(keys) != len(grads):
        raise AssertionError(f"{len(keys)} fixture gradients for {len(grads)} parameters")
    errors["gradients"] = max(rel(grads[k[len("grad/backbone."):]].grad.numpy(), data[k])
                              for k in keys)
    buffers = dict(model.named_buffers())
    keys = [k for k in data.files if k.startswith("sd_after_train_forward/")]
    errors["bn_running_stats"] = max(
        rel(buffers[k[len("sd_after_train_forward/backbone."):]].numpy(), data[k])
        for k in keys)
    return errors


if __name__ == "__main__":
    for name, err in check_against_fixture().items():
        print(f"{name:>22}: {err:.2e}")
