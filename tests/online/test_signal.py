"""A learned signal: on the drifting synthetic stream the progressive AUC (each pass scored before training on
it) rises clearly above 0.5, and the dynamic table beats a static vocabulary fitted on the first pass on the
rows whose user or item id was born after the first pass (ids a static vocabulary never learns)."""
import numpy as np
import pyarrow.parquet as pq

from dynarec.data.schema import Schema
from dynarec.data.stream import write_stream
from dynarec.metrics import auc
from dynarec.online.config import load_online_config
from dynarec.online.runner import run_online

SETS = ["model.embed_dim=8", "model.tower_hidden=[32]", "model.gate_emb_dim=8", "trainer.batch_size=1024",
        "trainer.threads=1", "trainer.lr=0.003", "trainer.embedding_lr=0.05"]


def _run(d, out, sets):
    first = pq.read_table(d / "pass-0000.parquet")
    vocab0 = {c: first.column(c).to_numpy() for c in ("user_id", "item_id")}
    seen = {c: set(v.tolist()) for c, v in vocab0.items()}
    ys, ps, ms = [], [], []

    def hook(k, preds, table, raw):
        if k == 0:
            return
        m = np.zeros(raw.num_rows, bool)
        for c in vocab0:  # born after pass 0, and seen in an earlier pass (a dynamic table could know it)
            ids = raw.column(c).to_numpy()
            m |= ~np.isin(ids, vocab0[c]) & np.isin(ids, np.fromiter(seen[c], np.int64))
            seen[c] |= set(ids.tolist())
        ys.append(table.labels["click"].numpy())
        ps.append(preds["click"])
        ms.append(m)
    rows = list(run_online(Schema.load(d / "schema.yaml"), d, out, load_online_config(None, SETS + sets, "pepnet"),
                           on_eval=hook))
    y, p, m = map(np.concatenate, (ys, ps, ms))
    return rows, auc(y[m], p[m]), m.mean()


def test_progressive_auc_rises_and_dynamic_beats_static_on_new_ids(tmp_path):
    d = tmp_path / "stream"
    write_stream(d, 5, 16000, seed=3)
    dyn_rows, dyn_new, share = _run(d, tmp_path / "dyn", ["online.max_rows=2000", "online.expiry_passes=2"])
    _, static_new, _ = _run(d, tmp_path / "static", ["online.table=static"])
    aucs = [r["auc"]["click"]["all"] for r in dyn_rows]
    assert abs(aucs[0] - 0.5) < 0.05  # pass 0 is scored by the untrained model
    assert min(aucs[2:]) > 0.7
    assert share > 0.2  # a real share of the rows carries ids born later
    # the ids carry half of the click logit (stream.ID_SHARE): 0.811 vs 0.743 here; seeds 1, 2, 4 of this
    # stream give +0.024 to +0.031
    assert dyn_new > static_new + 0.02, (dyn_new, static_new)
    assert max(r["table_rows"] for r in dyn_rows) <= 2000


def _item_stream(d, passes=6, rows=6000, seed=0):
    """A stream whose only signal is the item id: each item has a fixed CTR of 0.1 or 0.9; every pass a third of
    the items retire and as many new ones are born (a vocabulary fitted on pass 0 never knows them)."""
    rng = np.random.default_rng(seed)
    live, born, ctr = list(range(300)), 300, {}
    for i in live:
        ctr[i] = rng.choice([0.1, 0.9])
    import pyarrow as pa
    for p in range(passes):
        items = rng.choice(live, rows)
        y = (rng.random(rows) < np.array([ctr[i] for i in items])).astype(np.int64)
        pq.write_table(pa.table({"domain": ["a"] * rows, "item": items.astype(np.int64), "click": y}),
                       d / f"pass-{p:04d}.parquet")
        gone = set(rng.choice(live, 100, replace=False).tolist())
        live = [i for i in live if i not in gone] + list(range(born, born + 100))
        for i in range(born, born + 100):
            ctr[i] = rng.choice([0.1, 0.9])
        born += 100
    return Schema.from_dict({"features": [{"name": "domain", "group": "domain"},
                                          {"name": "item", "group": "item", "dynamic": True}],
                             "tasks": [{"name": "click"}], "domain": "domain"})


def test_on_an_id_only_signal_the_dynamic_table_learns_new_ids_and_a_first_pass_vocabulary_cannot(tmp_path):
    d = tmp_path / "items"
    d.mkdir()
    schema = _item_stream(d)
    sets = ["model.embed_dim=4", "model.hidden=[8]", "trainer.batch_size=256", "trainer.threads=1",
            "trainer.lr=0.01", "trainer.embedding_lr=0.3"]
    new_auc = {}
    for table in ("dynamic", "static"):
        seen0, ys, ps = None, [], []

        def hook(k, preds, tab, raw):
            nonlocal seen0
            ids = raw.column("item").to_numpy()
            if k == 0:
                seen0 = set(ids.tolist())
            elif k >= 2:  # items born after pass 0 (the dynamic table has met those born by pass k-1)
                m = ~np.isin(ids, np.fromiter(seen0, np.int64))
                ys.append(tab.labels["click"].numpy()[m])
                ps.append(preds["click"][m])
        extra = ["online.max_rows=600"] if table == "dynamic" else ["online.table=static"]
        list(run_online(schema, d, tmp_path / table, load_online_config(None, sets + extra, "dnn"), on_eval=hook))
        new_auc[table] = auc(np.concatenate(ys), np.concatenate(ps))
    assert abs(new_auc["static"] - 0.5) < 0.05, new_auc  # every new item reads the one unknown row
    assert new_auc["dynamic"] > 0.7, new_auc  # the per-id CTR is learned within the pass that admits the id
