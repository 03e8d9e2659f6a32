"""The eager training step of LightMedSeg variants at the ACDC plan's patch and batch (1 x 10 x 256 x 224, batch 7),
on a CUDA GPU, without nnU-Net: what a candidate would cost per iteration before a device session spends 20 x 250
iterations on it. AdamW, bf16 autocast, a log-sum-exp stand-in for the loss over the deep-supervision outputs; median
of 15 steps after 5 warm-up steps; peak memory since the variant was built.

    python3 benchmarks/device/step_probe.py OUT.json [VARIANT ...]   # all of VARIANTS by default
"""
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from nnunetv2_lightmedseg.architectures import LightMedSeg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from speed import median_ms  # noqa: E402  (benchmarks/ is no package)

PAPER_STRIDES = [(1, 2, 2), (1, 2, 2), (2, 2, 2), (1, 2, 2)]  # the ACDC plan's, as the trainer takes them
VARIANTS = {"paper": ("paper", PAPER_STRIDES, {}),
            "fullResStem": ("paper", [(1, 1, 1)] + PAPER_STRIDES[:-1], {}),  # nnUNetTrainerLightMedSeg_fullResStem
            "large": ("large", PAPER_STRIDES, {}),
            "fine": ("fine", PAPER_STRIDES, {}),
            "smoothHead": ("paper", PAPER_STRIDES, {"head_upsampling": "trilinear"})}


def step_ms(network: torch.nn.Module, x: torch.Tensor) -> float:
    optimizer = torch.optim.AdamW(network.parameters(), 2e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = sum(o.float().logsumexp(1).mean() for o in network(x))
        loss.backward()
        optimizer.step()

    return median_ms(step, torch.device("cuda"), warmup=5, repeats=15)


def main(out: str, names: list[str]) -> None:
    x = torch.randn(7, 1, 10, 256, 224, device="cuda")
    rows = {}
    for name in names or VARIANTS:
        preset, strides, options = VARIANTS[name]
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        network = LightMedSeg.from_preset(preset, 1, 4, strides=strides, deep_supervision=True,
                                          **options).cuda()
        rows[name] = {"step_ms": round(step_ms(network, x), 1),
                      "peak_GiB": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)}
        print(name, rows[name], flush=True)
        del network
    metadata = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device":
                torch.cuda.get_device_name(), "torch": torch.__version__,
                "command": " ".join(["python3 benchmarks/device/step_probe.py", out, *names]),
                "input": [7, 1, 10, 256, 224]}
    with open(out, "w") as f:
        json.dump({"metadata": metadata, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
