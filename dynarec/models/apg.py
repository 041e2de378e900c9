"""APG models (Yan et al., NeurIPS 2022, arXiv 2203.16218; docs/models.md "apg_<backbone> — APG: Adaptive Parameter
Generation"): ``apg_<backbone>``
for backbone in dnn, wdl, deepfm, dcn, dcnv2, pnn, fibinet, autoint — the backbone's deep MLP becomes APG
layers (:class:`~dynarec.models.apg_mixin.APGMixin`), everything else of the backbone is unchanged — and
``apg_multitask``: PEPNet-style per-task towers (shared across domains) made of APG layers."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from dynarec.errors import ConfigError
from dynarec.models.apg_mixin import APGMixin, APGOptions
from dynarec.models.autoint import AutoInt
from dynarec.models.base import WIDTHS, ModelConfig
from dynarec.models.ctr_backbone import CTRBackbone
from dynarec.models.dcn import DCN
from dynarec.models.dcnv2 import DCNv2
from dynarec.models.deepfm import DeepFM
from dynarec.models.fibinet import FiBiNET
from dynarec.models.heads import task_heads
from dynarec.models.pnn import PNN
from dynarec.models.registry import register
from dynarec.models.wdl import WDL
from dynarec.nn.mlp import MLP

PAPER = "Yan et al., APG: Adaptive Parameter Generation Network for Click-Through Rate Prediction, NeurIPS 2022"


def _register_apg(backbone: str):
    return register(f"apg_{backbone}", paper=f"{PAPER} (backbone: {backbone})", needs=("domain",),
                    multi_task=True, multi_domain=True, tags=("apg",))


class _DNNBackbone(CTRBackbone):
    """The ``dnn`` model's structure (MLP on E ⊕ dense, a linear logit per task) as a CTRBackbone."""

    @dataclass
    class Config(ModelConfig):
        pass

    def __init__(self, schema, config):
        super().__init__(schema, config)
        self.mlp = self.build_deep(self.input_dim, config.hidden)
        self.build_heads(self.mlp.out_features)

    def represent(self, batch, emb):
        return self.deep(self.flat_input(batch, emb), batch, emb), None


@_register_apg("dnn")
class APGDNN(APGMixin, _DNNBackbone):
    """APG on dnn: its deep MLP made of APG layers."""

    @dataclass
    class Config(APGOptions, _DNNBackbone.Config):
        pass


@_register_apg("wdl")
class APGWDL(APGMixin, WDL):
    """APG on wdl: its deep MLP made of APG layers."""

    @dataclass
    class Config(APGOptions, WDL.Config):
        pass


@_register_apg("deepfm")
class APGDeepFM(APGMixin, DeepFM):
    """APG on deepfm: its deep MLP made of APG layers."""

    @dataclass
    class Config(APGOptions, DeepFM.Config):
        pass


@_register_apg("dcn")
class APGDCN(APGMixin, DCN):
    """APG on dcn: its deep MLP made of APG layers."""

    @dataclass
    class Config(APGOptions, DCN.Config):
        pass


@_register_apg("dcnv2")
class APGDCNv2(APGMixin, DCNv2):
    """APG on dcnv2: its deep MLP made of APG layers."""

    @dataclass
    class Config(APGOptions, DCNv2.Config):
        pass


@_register_apg("pnn")
class APGPNN(APGMixin, PNN):
    """APG on pnn: its deep MLP made of APG layers."""

    @dataclass
    class Config(APGOptions, PNN.Config):
        pass


@_register_apg("fibinet")
class APGFiBiNET(APGMixin, FiBiNET):
    """APG on fibinet: its deep MLP made of APG layers."""

    @dataclass
    class Config(APGOptions, FiBiNET.Config):
        pass


@_register_apg("autoint")
class APGAutoInt(APGMixin, AutoInt):
    """APG on autoint: its deep MLP made of APG layers."""

    @dataclass
    class Config(APGOptions, AutoInt.Config):
        pass

    def __init__(self, schema, config):
        if not config.use_dnn:
            raise ConfigError("model.apg_autoint.use_dnn: APG replaces the MLP of AutoInt+, so use_dnn must be true")
        super().__init__(schema, config)


@register("apg_multitask", paper=f"{PAPER}; towers as in Chang et al., PEPNet, KDD 2023", needs=("domain",),
          multi_task=True, multi_domain=True, tags=("apg",))
class APGMultiTask(APGMixin, CTRBackbone):
    """PEPNet-style multi-task towers (PEPNet, KDD 2023, layout) with APG layers: an optional static shared bottom
    (``hidden``, default none) on E ⊕ dense, then per task a tower of APG layers (``tower_hidden``, PEPNet's
    [100, 64]) ending in a static linear logit; towers are shared across domains, the condition (default the
    domain) personalises them."""

    no_effect = {"tower_hidden": None}

    @dataclass
    class Config(APGOptions, ModelConfig):
        hidden: list[int] = field(default_factory=list, metadata=WIDTHS)
        tower_hidden: list[int] = field(default_factory=lambda: [100, 64], metadata=WIDTHS)

    def __init__(self, schema, config):
        super().__init__(schema, config)
        c = config
        self.bottom = MLP(self.input_dim, list(c.hidden), None, c.activation, c.dropout, c.batch_norm)
        self.towers = nn.ModuleDict({t: self.build_deep(self.bottom.out_features, c.tower_hidden) for t in self.tasks})
        self.heads = task_heads({t: tw.out_features for t, tw in self.towers.items()}, self.tasks)

    def compute(self, batch):
        emb = self.embed(batch)
        x = self.bottom(self.flat_input(batch, emb))
        z, index = self.apg_condition_args(batch, emb)
        return {t: self.heads[t](self.towers[t](x, z, index)).squeeze(-1) for t in self.tasks}
