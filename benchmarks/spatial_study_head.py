"""Does the study model gain from the slice network's feature *maps* instead of their average?

    python benchmarks/spatial_study_head.py --train train10 --test sel25 sel26 --out runs/sp
    python benchmarks/spatial_study_head.py ... --mode zonly      (the same head, maps averaged)

A question, not a shipped path. The slice network (the demo model, or ``--model``) is frozen;
every slice of each phantom set is passed through it once and its last feature map (256 x 8 x
8 for ichnet2 at 256 px), slice logits and label are kept (``OUT/NAME.npz``, float16 maps:
~0.85 GB per 25,000 slices; reused when present), with the checkpoint's own study head's
study logits. A small head is then trained on ``--train``'s studies (80 % / 20 % split, the
epoch with the lowest validation study loss kept): a 1 x 1 convolution to 32 channels, two
3 x 3 x 3 convolutions over (z, y, x) -- so a faint bleed seen in the same place on
neighbouring slices adds up before anything is pooled -- then per slice the maximum and mean
over the map (refined slice logits, added to the network's) and over the study (study
logits); loss as ``training.study``: BCE on refined slices and on the study. ``--mode zonly``
averages each map to 1 x 1 first (convolutions over z only): the control that tells keeping
space apart from retraining on new data. Prints, per ``--test`` set and pooled, study
AUC(any) of the checkpoint's head and of the new one with the paired bootstrap interval of
:func:`training.metrics.paired_auc_difference`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # training/ beside ichnode/

ANY = 5


def extract(data: Path, model: Path | None, out: Path) -> dict[str, np.ndarray]:
    """Feature maps, slice logits and labels in z order per study, and the head's study logits."""
    if out.exists():
        return dict(np.load(out))
    from ichnode.model import demo_model_path, head, load_checkpoint
    from ichnode.study import run_study_head
    from training.dataset import RSNADataset, find_layout, header_index, load_labels
    from training.loop import make_loader, model_input
    from training.study import group_studies

    layout = find_layout(data)
    ckpt = load_checkpoint(model or demo_model_path())
    if ckpt.study is None:
        raise SystemExit("the checkpoint has no study model to compare with")
    net = ckpt.model.float().eval()
    ckpt.study.model.float()
    table = load_labels(layout.csv)
    ids = list(table.index)
    cache = out.with_suffix(".index")
    cache.mkdir(parents=True, exist_ok=True)
    index = header_index(layout, ids, cache, progress=True)
    index = index[index["readable"].astype(bool)]
    indexed = set(index["id"])
    ds = RSNADataset.from_table(layout, table, [i for i in ids if i in indexed], ckpt.spec,
                                index=index)  # fmt: skip
    seen: list[str] = []
    maps, embs, logits, labels = [], [], [], []
    with torch.inference_mode():
        for x, y, pos, _, _ in make_loader(ds, 64, 0, None):
            if len(x) == 0:
                continue
            f = cast(nn.Module, net.features)(model_input(x, ckpt.spec, None, None))
            e = cast(nn.Sequential, net.classifier)[:-1](cast(nn.Module, net.pool)(f))
            maps.append(f.half().numpy())
            embs.append(e.numpy())
            logits.append(head(net)(e).numpy())
            labels.append(y.numpy())
            seen.extend(ds.ids[int(i)] for i in pos)
    emb, lg, y = np.concatenate(embs), np.concatenate(logits), np.concatenate(labels)
    rows = np.arange(len(seen), dtype=np.float32)[:, None]
    studies = group_studies(index, seen, rows, lg, y)  # the row numbers, grouped and z-ordered
    order = [r[:, 0].astype(int) for r in studies.emb]
    in_order = np.concatenate(order)
    result = {
        "fmap": np.concatenate(maps)[in_order],
        "logits": lg[in_order],
        "y": y[in_order],
        "lengths": np.array([len(o) for o in order]),
        "label": np.stack([s.max(axis=0) for s in studies.y]),
        "old_study": np.stack([run_study_head(ckpt.study, emb[o], lg[o])[1] for o in order]),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **result)
    return result


class SpatialHead(nn.Module):
    """Maps (B, L, C, h, w) of a padded batch of studies → refined slice and study logits."""

    def __init__(self, in_channels: int, width: int = 32, spatial: bool = True) -> None:
        super().__init__()
        self.spatial = spatial
        k, p = ((3, 3, 3), (1, 1, 1)) if spatial else ((3, 1, 1), (1, 0, 0))
        self.reduce = nn.Sequential(nn.Dropout2d(0.1), nn.Conv2d(in_channels, width, 1), nn.ReLU())
        self.z = nn.Sequential(nn.Conv3d(width, width, k, padding=p), nn.ReLU(),
                               nn.Conv3d(width, width, k, padding=p), nn.ReLU())  # fmt: skip
        self.slice_head = nn.Linear(2 * width, 6)
        self.study_head = nn.Linear(2 * width, 6)

    def forward(self, f: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor):
        b, length = f.shape[:2]
        if not self.spatial:
            f = f.mean(dim=(3, 4), keepdim=True)
        h = self.reduce(f.flatten(0, 1))
        h = h.view(b, length, *h.shape[1:]).permute(0, 2, 1, 3, 4)  # (B, C, L, h, w)
        h = self.z(h * mask[:, None, :, None, None])
        smax = h.amax(dim=(3, 4)).permute(0, 2, 1)  # (B, L, C)
        smean = h.mean(dim=(3, 4)).permute(0, 2, 1)
        refined = logits + self.slice_head(torch.cat([smax, smean], -1))
        gmax = smax.masked_fill(~mask[..., None], -1e4).amax(1)
        gmean = (smean * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return refined, self.study_head(torch.cat([gmax, gmean], -1))


def batch(d: dict[str, np.ndarray], picks, flip: bool = False):
    bounds = np.cumsum(np.r_[0, d["lengths"]])
    length = int(max(d["lengths"][i] for i in picks))
    c, h, w = d["fmap"].shape[1:]
    f = torch.zeros(len(picks), length, c, h, w)
    lg, y = torch.zeros(len(picks), length, 6), torch.zeros(len(picks), length, 6)
    mask = torch.zeros(len(picks), length, dtype=torch.bool)
    for k, i in enumerate(picks):
        s, e = bounds[i], bounds[i + 1]
        maps = torch.from_numpy(d["fmap"][s:e].astype(np.float32))
        f[k, : e - s] = maps.flip(-1) if flip else maps
        lg[k, : e - s] = torch.from_numpy(d["logits"][s:e])
        y[k, : e - s] = torch.from_numpy(d["y"][s:e])
        mask[k, : e - s] = True
    return f, lg, y, mask, torch.from_numpy(d["label"][list(picks)]).float()


def study_logits(model: SpatialHead, d: dict[str, np.ndarray]) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(d["label"]), 16):
            f, lg, _, mask, _ = batch(d, range(s, min(s + 16, len(d["label"]))))
            out.append(model(f, lg, mask)[1].numpy())
    return np.concatenate(out)


def train(d: dict[str, np.ndarray], spatial: bool, epochs: int, seed: int) -> SpatialHead:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(d["label"]))
    val, trn = perm[: len(perm) // 5], perm[len(perm) // 5 :]
    model = SpatialHead(d["fmap"].shape[1], spatial=spatial)
    opt = torch.optim.AdamW(model.parameters(), 1e-3, weight_decay=1e-2)
    best, state = float("inf"), None
    for epoch in range(epochs):
        model.train()
        rng.shuffle(trn)
        for s in range(0, len(trn), 16):
            f, lg, y, mask, sy = batch(d, trn[s : s + 16], flip=bool(rng.random() < 0.5))
            refined, study = model(f, lg, mask)
            loss = F.binary_cross_entropy_with_logits(refined[mask], y[mask])
            loss = loss + F.binary_cross_entropy_with_logits(study, sy)
            opt.zero_grad()
            loss.backward()
            opt.step()
        vloss = 0.0
        model.eval()
        with torch.inference_mode():
            for s in range(0, len(val), 32):
                f, lg, _, mask, sy = batch(d, val[s : s + 32])
                study = model(f, lg, mask)[1]
                vloss += F.binary_cross_entropy_with_logits(study, sy, reduction="sum").item()
        vloss /= len(val)
        print(f"epoch {epoch}: validation study loss {vloss:.4f}", flush=True)
        if vloss < best:
            best, state = vloss, {k: v.clone() for k, v in model.state_dict().items()}
    assert state is not None
    model.load_state_dict(state)
    return model


def main() -> None:
    from training.metrics import paired_auc_difference

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--train", type=Path, required=True)
    ap.add_argument("--test", type=Path, nargs="+", required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--mode", choices=("spatial", "zonly"), default="spatial")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    model = train(extract(a.train, a.model, a.out / f"{a.train.name}.npz"), a.mode == "spatial",
                  a.epochs, a.seed)  # fmt: skip
    ys, olds, news = [], [], []
    for data in a.test:
        d = extract(data, a.model, a.out / f"{data.name}.npz")
        y, old, new = d["label"][:, ANY], d["old_study"][:, ANY], study_logits(model, d)[:, ANY]
        print(f"{data.name}: study AUC(any) checkpoint's head {roc_auc_score(y, old):.4f}, "
              f"{a.mode} head {roc_auc_score(y, new):.4f}")  # fmt: skip
        ys.append(y)
        olds.append(old)
        news.append(new)
    diff = paired_auc_difference(np.concatenate(ys), np.concatenate(olds), np.concatenate(news))
    if diff is not None:
        print(f"pooled: {a.mode} - checkpoint's head {diff[0]:+.4f} "
              f"(95 % CI {diff[1]:+.4f} to {diff[2]:+.4f})")  # fmt: skip


if __name__ == "__main__":
    main()
