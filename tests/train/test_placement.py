"""Placement as a strategy: placement_for picks one class per (trainer.distributed, processes); the
multi-process config change NCCL needs (dense table gradients) is made on a copy, never on the caller's
config; one process trains with the caller's config object untouched."""
import dataclasses

import pytest
import torch

from dynarec.errors import ConfigError
from dynarec.train.config import TrainerConfig
from dynarec.train.placement import PLACEMENTS, DataParallel, SingleProcess, TorchRec, placement_for


def test_one_class_per_distributed_value_and_world():
    assert type(placement_for(TrainerConfig(), 1)) is SingleProcess
    assert type(placement_for(TrainerConfig(), 4)) is DataParallel
    assert type(placement_for(TrainerConfig(distributed="torchrec"), 4)) is TorchRec
    assert type(placement_for(TrainerConfig(distributed="torchrec"), 1)) is TorchRec  # refuses one process at join
    assert set(PLACEMENTS) == {"ddp", "torchrec"}
    with pytest.raises(ConfigError, match="trainer.distributed: expected ddp \\| torchrec, got 'horovod'"):
        placement_for(dataclasses.replace(TrainerConfig(), distributed="horovod"), 2)


def test_nccl_dense_gradients_on_a_copy_and_sparse_adam_refused():
    cfg = TrainerConfig(embedding_grad="sparse")
    p = DataParallel(cfg, 2)
    p.device = torch.device("cuda", 0)  # config() reads only the device type: no GPU needed
    eff = p.config(cfg)
    assert eff.embedding_grad == "dense" and cfg.embedding_grad == "sparse" and eff is not cfg
    assert dataclasses.replace(eff, embedding_grad="sparse") == cfg  # nothing else changed
    p.device = torch.device("cpu")  # gloo all-gathers sparse gradients: the config as given
    assert p.config(cfg) is cfg
    p.device = torch.device("cuda", 0)
    with pytest.raises(ConfigError, match="sparse_adam needs sparse gradients"):
        p.config(TrainerConfig(embedding_optimizer="sparse_adam"))


def test_one_process_trainer_keeps_the_callers_config(small_synth):
    from dynarec.models import build_model
    from dynarec.train.trainer import Trainer

    schema, tables, _ = small_synth
    cfg = TrainerConfig(device="cpu", epochs=1, progress=False)
    before = dataclasses.asdict(cfg)
    tr = Trainer(build_model("dnn", schema, {"hidden": [8]}), cfg)
    tr.fit(tables["train"].subset(torch.arange(512)))
    assert tr.cfg is cfg and dataclasses.asdict(cfg) == before
    assert type(tr.placement) is SingleProcess and tr.placement.main and tr.placement.world == 1
