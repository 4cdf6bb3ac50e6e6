"""training.study.embed_dataset: the slice network's embeddings, plain and mirrored."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from ichnode.model import build, embed
from training.loop import make_spec, model_input
from training.study import embed_dataset


class _Loader(list):
    """One batch as the training loader yields it: HU planes, labels, positions, bad, masks."""

    def __init__(self, x: torch.Tensor) -> None:
        n = len(x)
        super().__init__([(x, torch.zeros(n, 6), list(range(n)), [], None)])
        self.dataset = SimpleNamespace(ids=[f"ID_{i}" for i in range(n)])


def test_mirrored_embeddings_are_the_mean_of_the_slice_and_its_mirror():
    torch.manual_seed(0)
    spec = make_spec("stack", 64, pixel_mm=0.9)
    model = build("ichnet2", in_channels=spec.channels).eval()
    x = torch.rand(3, 1, 64, 64, generator=torch.Generator().manual_seed(0)) * 120.0 - 20.0
    dev = torch.device("cpu")
    ids, plain, _, _ = embed_dataset(model, _Loader(x), spec, dev, set())
    _, mirrored, logits, _ = embed_dataset(model, _Loader(x), spec, dev, set(), mirrored=True)
    with torch.inference_mode():
        inp = model_input(x, spec, None, None)
        expected = ((embed(model, inp) + embed(model, inp.flip(-1))) / 2).numpy()
    assert ids == ["ID_0", "ID_1", "ID_2"]
    np.testing.assert_allclose(mirrored, expected, rtol=1e-5, atol=1e-5)
    assert not np.allclose(mirrored, plain, atol=1e-5)  # random slices are not symmetric
    assert logits.shape == (3, 6)
