"""``dynarec online``: training by passes over a stream of raw pass files (PEPNet's online learning, Chang et
al., KDD 2023, section 2.3; Monolith-style admission / expiry in the dynamic index).

For each pass file of DIR (CSV / Parquet, in name order): evaluate it first with the model as it is
(progressive validation: AUC / logloss per task x domain on data the model has not trained on), train on it
(one :class:`~dynarec.train.step.TrainStep` per batch, raw ids mapped to slots batch by batch, so ids are
admitted as they arrive), close the pass in the index (expiry, eviction to the caps), then write
``RUN/passes/NNNN/`` (``model.pt``: a checksummed checkpoint with the index, optimizer and generator states;
``delta.pt``; ``serving.pt``: what serving the pass needs, :mod:`dynarec.online.serving`; ``metrics.json``) aside, rename it into place and point ``RUN/current`` at it atomically.
``resume=True`` continues after the pass ``current`` names, exactly as if the run had never stopped. One CPU
process (``trainer.device`` auto / cpu)."""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from dynarec import outdir
from dynarec.errors import DataError, DynarecError
from dynarec.evalstream import evaluate_stream
from dynarec.metrics import compute_metrics, predict_table
from dynarec.online.chunks import PassChunks
from dynarec.online.config import OnlineExperiment, pass_batch, run_config
from dynarec.online.delta import delta_rows, make_delta, snapshot, write_delta
from dynarec.online.marker import pass_dir, read_current, write_current
from dynarec.online.state import fresh_state, restore_state
from dynarec.online.schema import encode_pass
from dynarec.online.serving import write_serving
from dynarec.train.checkpoint import read_checkpoint, write_atomic
from dynarec.train.streamed_checkpoint import checkpoint_dict, save_streamed
from dynarec.train.loop import DivergedError

RUN_FILE = "online.json"
SUFFIXES = (".csv", ".parquet", ".pq")


def pass_files(folder) -> list[Path]:
    d = Path(folder)
    if not d.is_dir():
        raise DataError(f"{d}: --passes must name a folder of pass files (csv / parquet)")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix in SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"{d}: no pass files (*.csv, *.parquet)")
    return files


def _fill(st, table, raw, idx=None, train=False) -> None:
    """Write the slots of the dynamic features' raw ids into ``table`` (a TensorTable, or a Batch with
    ``idx`` the rows of ``raw`` it holds); ``train`` counts the ids (admission) first."""
    cols = [f.name for f in st.schema.sparse]
    for k, name in enumerate(st.dynamic):
        ids = raw[name] if idx is None else raw[name][idx]
        slots = st.index.lookup(ids, k)
        if train:  # counted after the lookup: the batch that admits an id still reads the default row
            st.index.observe(ids, k)
        if name in table.sequences:
            table.sequences[name] = slots
        else:
            table.sparse[:, cols.index(name)] = slots


def _train_pass(st, table, raw, k: int) -> tuple[float, float]:
    """One pass of training held in memory -> (mean loss, seconds)."""
    n = len(table)
    bs = pass_batch(n, st.cfg)
    order = torch.randperm(n, generator=st.batches) if st.cfg.online.shuffle else torch.arange(n)
    return _train_batches(st, ((table.take(order[s:s + bs]), raw, order[s:s + bs]) for s in range(0, n, bs)), k)


def _train_batches(st, batches, k: int) -> tuple[float, float]:
    """One step per (batch, raw ids, rows of ``raw`` in the batch or None) -> (mean loss, seconds)."""
    model = st.model
    model.train()
    t0, total, steps = time.perf_counter(), 0.0, 0
    for b, raw, idx in batches:
        if st.index is not None:
            _fill(st, b, raw, idx, train=True)
        try:
            loss = st.step.step(b)
        except FloatingPointError as e:
            raise DivergedError(f"training diverged in pass {k}, step {steps + 1}: {str(e).split(' (')[0]}; "
                                "likely cause: a learning rate too high, or NaN / inf values in the data") from None
        if st.index is not None:
            st.index.step()
        total, steps = total + loss, steps + 1
    model.eval()
    return total / max(steps, 1), time.perf_counter() - t0


def _chunked_pass(st, path, k: int, notes: dict):
    """A pass read in chunks (:mod:`dynarec.online.chunks`) -> (metrics, rows, (loss, seconds), a raw piece)."""
    view = PassChunks(st, path, st.cfg.online.chunk_mb, _fill, notes)
    m = evaluate_stream(st.model, view, st.cfg.trainer.eval_batch_size, st.cfg.online.eval_budget_mb)
    if m.pop("method") == "exact":
        m.pop("auc_error_bound")
    return m, len(view), _train_batches(st, view.train_batches(pass_batch(len(view), st.cfg)), k), view.raw_piece


def _write_pass(out: Path, st, k: int, delta: dict, row: dict, raw_table=None) -> None:
    """``RUN/passes/NNNN`` written aside, renamed into place, then ``current`` pointed at it."""
    final = out / pass_dir(k)
    tmp = final.parent / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # from the tensors' storage to the file (no in-memory copy of the tables; dynarec-checkpoint-3)
    save_streamed(tmp / "model.pt", checkpoint_dict(st.model, dict(st.cfg.params), None,
                                                    {"online": st.extra(), "pass": k}))
    write_delta(tmp / "delta.pt", delta)
    if raw_table is not None:
        write_serving(tmp, st, raw_table)
    (tmp / "metrics.json").write_text(json.dumps(row, indent=2))
    shutil.rmtree(final, ignore_errors=True)  # only a pass that `current` never named can be here
    os.replace(tmp, final)
    write_current(out, k)
    write_atomic(out / "summary.json", json.dumps(summary(out, st), indent=2).encode())


def summary(out: Path, st) -> dict:
    return {"run": str(out), "model": st.cfg.model, "table": st.cfg.online.table, "current": pass_dir(st.next_pass - 1)
            if st.next_pass else None, "passes": list(st.rows)}


def _start(out: Path, cfg: OnlineExperiment, schema, files, resume: bool):
    """The state to continue from (None: start at the first pass) after checking the run folder."""
    if resume:
        if not (out / RUN_FILE).exists():
            raise DynarecError(f"{out}: no online run to resume (no {RUN_FILE})")
        k = read_current(out)
        if k is None:
            return None
        f = out / pass_dir(k) / "model.pt"
        st = restore_state(cfg, read_checkpoint(f), str(f))
        names = [p.name for p in files[:len(st.files)]]
        if names != st.files:
            raise DataError(f"{out}: the run trained on passes {st.files[:3]}..., the pass folder now starts with "
                            f"{names[:3]}...; resume with the same --passes folder")
        return st
    outdir.check_out(out, (RUN_FILE,), "online run")
    if (out / "current").exists():
        raise DynarecError(f"{out}: holds an online run (current -> {(out / 'current').read_text().strip()}); "
                           "continue it with --resume or choose another --out")
    shutil.rmtree(out / "passes", ignore_errors=True)  # a first pass that never completed
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / RUN_FILE, json.dumps({"format": "dynarec-online-1", "config": run_config(cfg),
                                             "schema": schema.to_dict()}, indent=2).encode())
    return None


def run_online(schema, passes, out, cfg: OnlineExperiment, resume: bool = False, on_pass=None, on_eval=None):
    """Run (or continue) an online run; yields one JSON-able row per pass, in order.

    Args:
        schema: the raw stream's :class:`~dynarec.data.schema.Schema` (``dynamic: true`` features go to the index).
        passes: folder of pass files.  out: the run folder.  cfg: :class:`OnlineExperiment`.
        resume: continue after the last completed pass (``RUN/current``).
        on_eval: ``on_eval(k, preds {task: [N]}, table, raw_table)`` after each progressive evaluation (benchmarks).
    """
    out = Path(out)
    files = pass_files(passes)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    st = _start(out, cfg, schema, files, resume)
    for k in range(st.next_pass if st else 0, len(files)):
        if st is None:
            st = fresh_state(cfg, schema, files[0])
        notes: dict = {}
        if cfg.online.chunk_mb:
            if on_eval is not None:
                raise DynarecError("run_online: on_eval receives a whole pass; it needs online.chunk_mb: 0")
            m, rows, (loss, secs), raw_table = _chunked_pass(st, files[k], k, notes)
        else:
            table, raw, raw_table = encode_pass(files[k], st.schema, st.encoders, st.dynamic, st.kinds, notes)
            if st.index is not None:
                _fill(st, table, raw)
            preds = predict_table(st.model, table, cfg.trainer.eval_batch_size)
            types = {t.name: t.type for t in st.schema.tasks}
            m = compute_metrics({t: v.double().numpy() for t, v in table.labels.items()}, preds,
                                table.domain.numpy(), st.schema.domain_values,
                                None if table.user is None else table.user.numpy(), types)
            if on_eval is not None:
                on_eval(k, preds, table, raw_table)
            rows = len(table)
            loss, secs = _train_pass(st, table, raw, k)
        stats = st.index.end_pass() if st.index is not None else {"admitted": 0, "evicted": 0, "expired": 0}
        delta = make_delta(st.serving, snapshot(st.model, st.index), k, k % cfg.online.dense_every == 0)
        counts = []
        if st.index is not None:  # any SlotIndex (dynarec.online.ids)
            st.index.changed_slots(clear=True)  # the delta is found by comparison: drop the index's own log
            counts = st.index.feature_counts()
        row = {"pass": k, "file": files[k].name, "rows": rows, "auc": m.get("auc", {}),
               "logloss": m.get("logloss", {}), "table_rows": st.index.slots_in_use if st.index is not None else 0,
               "feature_rows": dict(zip(st.dynamic, counts)), "admitted": int(stats["admitted"]),
               "evicted": int(stats["evicted"]), "expired": int(stats["expired"]), "delta_rows": delta_rows(delta),
               "dense_in_delta": delta["dense"] is not None, "train_loss": loss,
               "train_rows_per_s": rows / max(secs, 1e-9), "batch_size": pass_batch(rows, cfg)}
        if "auc_error_bound" in m:  # a chunked pass too large for exact metrics (histogram AUC)
            row["auc_error_bound"] = m["auc_error_bound"]
        if notes:  # id columns that arrived with another type than on the first pass
            row["ids_hashed_as_text"] = {n: {"values": len(v), "first": v[0]} for n, v in notes.items()}
        st.files.append(files[k].name)
        st.rows.append(row)
        st.next_pass = k + 1
        _write_pass(out, st, k, delta, row, raw_table)
        if on_pass is not None:
            on_pass(row)
        yield row
    if st is None:  # resumed with no completed pass and no files left: nothing to do
        return


def final_summary(out) -> dict:
    """``RUN/summary.json`` (what the CLI prints last with ``--json``)."""
    f = Path(out) / "summary.json"
    return json.loads(f.read_text()) if f.exists() else {"run": str(out), "passes": []}


def mean_auc(rows: list[dict], task: str, key: str = "all") -> float:
    v = [r["auc"].get(task, {}).get(key) for r in rows]
    v = [x for x in v if x is not None]
    return float(np.mean(v)) if v else float("nan")
