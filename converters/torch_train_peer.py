"""PyTorch eager training throughput on the paper's full-width whole-image model: the peer
of `allconv finetune --device cuda` in scripts/gpu_check.sh (a measurement, not a test).

The model is written here layer for layer as the benchmark .h5 holds it (Keras 2.0.8
ResNet50 without its top, then two bottleneck blocks [512-512-1024], stride 2 with a
projection shortcut, then global average pooling and Dense(2)): the same convolutions, the
same FLOPs. BatchNorm as Keras has it (epsilon 1e-3, momentum 0.99). Channels-last,
cuDNN autotuning on, Adam at 1e-4 as the allconv run; random inputs already on the GPU, so
this times the model alone (allconv's figure includes decoding and augmenting on the CPU:
it reports its data-wait share beside it).

    python3 converters/torch_train_peer.py H W BATCH STEPS [--amp]

Prints one JSON line: images/s over STEPS after 3 warm-up steps, peak GPU memory, card.
"""
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)


class SamePad(nn.Module):
    """TensorFlow's `same` padding for a strided window (more on the bottom/right)."""

    def __init__(self, k, s):
        super().__init__()
        self.k, self.s = k, s

    def forward(self, x):
        h, w = x.shape[-2:]
        ph = max((-(-h // self.s) - 1) * self.s + self.k - h, 0)
        pw = max((-(-w // self.s) - 1) * self.s + self.k - w, 0)
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


class Bottleneck(nn.Module):
    """Keras 2.0.8 conv_block / identity_block: the stride sits on the first 1x1."""

    def __init__(self, cin, f1, f2, f3, stride, project, dropout=0.0):
        super().__init__()
        self.a = nn.Conv2d(cin, f1, 1, stride)
        self.an = bn(f1)
        self.b = nn.Conv2d(f1, f2, 3, 1, 1)
        self.bn_ = bn(f2)
        self.c = nn.Conv2d(f2, f3, 1)
        self.cn = bn(f3)
        self.proj = nn.Sequential(nn.Conv2d(cin, f3, 1, stride), bn(f3)) if project else None
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        y = self.drop(F.relu(self.an(self.a(x))))
        y = self.drop(F.relu(self.bn_(self.b(y))))
        y = self.cn(self.c(y))
        s = self.proj(x) if self.proj is not None else x
        return self.drop(F.relu(y + s))


def stage(cin, f1, f3, blocks, stride, dropout=0.0):
    layers = [Bottleneck(cin, f1, f1, f3, stride, True, dropout)]
    layers += [Bottleneck(f3, f1, f1, f3, 1, False, dropout) for _ in range(blocks - 1)]
    return layers


class WholeImageResNet50(nn.Module):
    def __init__(self, classes=2, dropout=0.5):
        super().__init__()
        self.stem = nn.Sequential(SamePad(7, 2), nn.Conv2d(3, 64, 7, 2), bn(64), nn.ReLU(),
                                  nn.MaxPool2d(3, 2))
        self.body = nn.Sequential(*stage(64, 64, 256, 3, 1), *stage(256, 128, 512, 4, 2),
                                  *stage(512, 256, 1024, 6, 2), *stage(1024, 512, 2048, 3, 2))
        # The top: [512-512-1024] x 2, each block strided with a projection (with BN).
        self.top = nn.Sequential(Bottleneck(2048, 512, 512, 1024, 2, True, dropout),
                                 Bottleneck(1024, 512, 512, 1024, 2, True, dropout))
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, classes)

    def forward(self, x):
        x = self.top(self.body(self.stem(x)))
        return self.fc(self.drop(x.mean((2, 3))))


def main():
    h, w, batch, steps = (int(a) for a in sys.argv[1:5])
    amp = "--amp" in sys.argv
    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(1)
    model = WholeImageResNet50().to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-7)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    x = torch.randn(batch, 3, h, w, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,), device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = F.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        return loss

    model.train()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    print(json.dumps({
        "peer": f"PyTorch {torch.__version__} eager", "card": torch.cuda.get_device_name(0),
        "amp": amp, "batch": batch, "size": [h, w], "steps": steps,
        "images_per_s": batch * steps / dt, "loss": float(loss),
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20,
    }))


if __name__ == "__main__":
    main()
