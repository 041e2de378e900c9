"""The ``online:`` eviction keys become ONE eviction config, carried by every table that serves a dynamic
feature (``TableSpec.eviction``), and the run's index is built from it."""
from dynarec.data.schema import Schema
from dynarec.online.config import load_online_config
from dynarec.online.runner import pass_files
from dynarec.online.state import fresh_state
from dynarec.tables.eviction import DistanceLfu, EvictionConfig

from tests.online.conftest import SMALL


def test_the_index_is_built_from_the_eviction_config_on_the_specs(stream):
    cfg = load_online_config(None, SMALL + ["online.score=distance_lfu", "online.decay=1.5", "online.headroom=0.2",
                                            "online.expiry_passes=3", "online.threshold=2"], "pepnet")
    st = fresh_state(cfg, Schema.load(stream / "schema.yaml"), pass_files(stream)[0])
    want = EvictionConfig(DistanceLfu(decay=1.5), headroom=0.2, expiry_passes=3, threshold=2)
    serving = {n for n, s in st.model.tables.specs.items() if set(s.features) & set(st.dynamic)}
    assert serving == {"features", "prior"}  # the feature table and the gate-prior table
    for n, s in st.model.tables.specs.items():
        assert s.eviction == (want if n in serving else None), n
    assert st.index.eviction == want and st.index.policy == DistanceLfu(decay=1.5)
    assert st.index.headroom == 0.2 and st.index.threshold == 2 and st.index.expiry_passes == 3


def test_a_policy_parameter_of_another_score_is_refused():
    import pytest

    from dynarec.errors import ConfigError

    for score, key in (("lfu", "online.decay=1.5"), ("feature", "online.ttl_steps=200"), ("ttl", "online.gamma=0.3")):
        with pytest.raises(ConfigError, match=rf"online\.{key.split('.')[1].split('=')[0]}: has no effect with "
                                              rf"online\.score={score}"):
            load_online_config(None, SMALL + [f"online.score={score}", key], "pepnet")
    # the score's own parameter is accepted and reaches the policy
    cfg = load_online_config(None, SMALL + ["online.score=ttl", "online.ttl_steps=200"], "pepnet")
    assert cfg.online.ttl_steps == 200
