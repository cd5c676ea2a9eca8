"""The fast paths keep the maths: skipping batches of a resumed epoch, the trainer's batch feeder,
persistent decoding workers, the sharded evaluation, per-(epoch, rank) seeds, and a step that reads
nothing back from the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcompress.core.config import LossTerm
from kdcompress.core.infer import accuracy, predict
from kdcompress.core.spec import InputSpec
from kdcompress.core.types import LossContext
from kdcompress.data.imagesplits import ArraySplit, FileSplit
from kdcompress.data.specs import load_data
from kdcompress.losses.base import Objective
from kdcompress.students.registry import build_student
from kdcompress.train.distributed import Dist
from kdcompress.train.loop import epoch_seed, evaluate
from kdcompress.train.step import Feeder, StepEngine

from .conftest import TINY_DATA

SPEC = InputSpec((1, 8, 8), (0.5,), (0.25,))


def _same(a, b) -> bool:
    return len(a) == len(b) and all(
        torch.equal(x.x, y.x) and torch.equal(x.y, y.y) and torch.equal(x.index, y.index)
        for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    paths = []
    for i in range(24):
        p = root / f"{i}.png"
        Image.fromarray(np.full((8, 8), 10 * i, dtype=np.uint8)).save(p)
        paths.append(str(p))
    return tuple(paths), torch.arange(24) % 3


def test_skip_leaves_out_exactly_the_first_batches_of_the_same_order(files):
    paths, y = files
    splits = [load_data(TINY_DATA).train, FileSplit(paths, y, (1, 8, 8), workers=0),
              ArraySplit(torch.randint(0, 255, (24, 1, 10, 10), dtype=torch.uint8), y, (1, 8, 8))]
    for split in splits:
        kw = dict(shuffle=True, drop_last=True, seed=3, epoch=2, rank=1, world=2)
        full = list(split.batches(5, **kw))
        assert len(full) == split.num_batches(5, drop_last=True, world=2) >= 2
        assert _same(list(split.batches(5, skip=1, **kw)), full[1:])
        assert list(split.batches(5, skip=len(full), **kw)) == []


def test_feeder_on_the_cpu_gives_the_splits_own_shard():
    split = load_data(TINY_DATA).train
    feeder = Feeder(split, torch.device("cpu"), 8, seed=5, dist=Dist(rank=1, world=2))
    want = list(split.batches(8, shuffle=True, drop_last=True, seed=5, epoch=3, rank=1, world=2))
    assert _same(list(feeder.epoch(3, skip=2)), want[2:])
    other = list(split.batches(8, shuffle=True, drop_last=True, seed=5, epoch=3, rank=0, world=2))
    seen = torch.cat([b.index for b in want + other])
    assert len(set(seen.tolist())) == len(seen)  # the two ranks' shards are disjoint


def test_decoding_workers_persist_from_one_epoch_to_the_next(files):
    paths, y = files
    split = FileSplit(paths, y, (1, 8, 8), workers=1)
    first = list(split.batches(6, shuffle=True, seed=0, epoch=1))
    loader, _ = split._loader
    it = loader._iterator
    pids = [w.pid for w in it._workers]
    second = list(split.batches(6, shuffle=True, seed=0, epoch=2))
    assert split._loader[0] is loader and loader._iterator is it and [w.pid for w in it._workers] == pids
    assert sorted(torch.cat([b.index for b in first]).tolist()) == list(range(24))
    assert [b.index.tolist() for b in first] != [b.index.tolist() for b in second]  # new order, same workers
    # the images decoded by the worker are those of the indices asked for
    for b in second:
        assert torch.allclose(b.x[:, 0, 0, 0], (10 * b.index).float() / 255)


def test_sharded_evaluation_equals_the_single_process_accuracy(monkeypatch):
    splits = load_data(TINY_DATA)
    torch.manual_seed(0)
    model = build_student("tinycnn_w8", 3, SPEC)
    want = accuracy(predict(model, splits.val, SPEC, torch.device("cpu")), splits.val.y)
    assert evaluate(model, splits.val, SPEC, torch.device("cpu")) == pytest.approx(want, abs=1e-6)  # f32 mean
    # three ranks' shards (10 samples, padded to 12 by repeating two), combined by max as the trainer does
    hits = []
    monkeypatch.setattr(Dist, "max", lambda self, v: hits.append(v) or v)
    for r in range(3):
        evaluate(model, splits.val, SPEC, torch.device("cpu"), Dist(rank=r, world=3), batch_size=2)
    assert len(splits.val) % 3 != 0
    combined = torch.stack(hits).amax(0)
    assert float(combined.sum() / len(splits.val)) == pytest.approx(want, abs=1e-6)
    assert float(torch.stack(hits).sum()) >= float(combined.sum())  # a plain sum could count a repeat twice


def test_epoch_seeds_differ_by_epoch_rank_and_stream():
    seeds = {epoch_seed(0, e, r, s) for e in range(1, 30) for r in range(8) for s in (0, 1)}
    assert len(seeds) == 29 * 8 * 2 and all(0 <= v < 2**63 for v in seeds)
    assert epoch_seed(0, 1, 0, 0) == epoch_seed(0, 1, 0, 0) != epoch_seed(1, 1, 0, 0)


def test_a_step_reads_nothing_back_and_updates_the_student():
    torch.manual_seed(0)
    student, teacher = build_student("tinycnn_w8", 3, SPEC), build_student("resnet8", 3, SPEC).eval()
    obj = Objective((LossTerm("ce", 0.1), LossTerm("kd", 0.9, params={"T": 4.0})), LossContext(3, 16, 64))
    opt = torch.optim.SGD(student.parameters(), lr=0.1)

    def t_out(x, want_embed):
        from kdcompress.core.types import ModelOut

        return ModelOut(teacher(x))

    engine = StepEngine(student=student, objective=obj, opt=opt, teacher=t_out, spec=SPEC,
                        device=torch.device("cpu"), aug_mode="shift")
    assert not engine.amp and not engine.channels_last
    batch = next(load_data(TINY_DATA).train.batches(8))
    before = [p.detach().clone() for p in student.parameters()]
    loss, parts = engine.step(batch, 1, torch.Generator().manual_seed(0))
    assert isinstance(loss, torch.Tensor) and not loss.requires_grad and torch.isfinite(loss)
    assert set(parts) == {"ce", "kd"} and all(isinstance(v, torch.Tensor) for v in parts.values())
    assert float(loss) == pytest.approx(0.1 * float(parts["ce"]) + 0.9 * float(parts["kd"]), rel=1e-6)
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters(), strict=True))
