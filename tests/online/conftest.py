import pytest

from dynarec.data.schema import Schema
from dynarec.data.stream import write_stream
from dynarec.online.config import load_online_config
from dynarec.online.runner import run_online

SMALL = ["model.embed_dim=8", "model.tower_hidden=[16]", "model.gate_emb_dim=8", "trainer.batch_size=256",
         "trainer.threads=1", "trainer.lr=0.003", "trainer.embedding_lr=0.05"]


@pytest.fixture(scope="session")
def stream(tmp_path_factory):
    """A drifting synthetic stream: 4 passes of 1,500 rows, user / item / author ids dynamic."""
    d = tmp_path_factory.mktemp("stream")
    write_stream(d, 4, 1500, seed=3)
    return d


def online(stream_dir, out, *sets, model="pepnet", schema=None):
    """Run ``dynarec online`` in process -> its JSON rows."""
    cfg = load_online_config(None, SMALL + list(sets), model)
    return list(run_online(schema or Schema.load(stream_dir / "schema.yaml"), stream_dir, out, cfg))
