"""An online pass's ``model.pt`` is written from the tensors' storage (``dynarec-checkpoint-3``,
:mod:`dynarec.train.streamed_checkpoint`): its checksum is checked on read (a flipped byte is a one-line
error naming the file, exit 2 through the CLI), it holds the pass's exact weights and index, ``--resume``
from it equals an uninterrupted run, and passes written in the older sealed format (``dynarec-checkpoint-2``)
still resume the same."""
from __future__ import annotations

import shutil

import torch

from dynarec.cli import main
from dynarec.data.schema import Schema
from dynarec.online.config import load_online_config
from dynarec.online.marker import pass_dir, write_current
from dynarec.online.runner import run_online
from dynarec.train.checkpoint import FORMAT as OLD, read_checkpoint, sealed, write_atomic
from dynarec.train.streamed_checkpoint import FORMAT, MAGIC, is_streamed

from tests.online.conftest import SMALL

SETS = SMALL + ["online.max_rows=100", "online.expiry_passes=1"]


def _strip(rows):
    return [{k: v for k, v in r.items() if k != "train_rows_per_s"} for r in rows]


def _equal(a, b) -> bool:
    """Nested dicts / lists of tensors and plain values, compared exactly."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _old_format(f) -> None:
    """Rewrite pass checkpoint ``f`` as the sealed dynarec-checkpoint-2 file the runner wrote before."""
    import io

    blob = read_checkpoint(f)
    blob = {k: v for k, v in blob.items()}
    blob["format"] = OLD
    buf = io.BytesIO()
    torch.save(blob, buf)
    write_atomic(f, sealed(OLD, buf.getvalue()))


def test_pass_checkpoint_streamed_resume_and_old_format(stream, tmp_path, capsys):
    cfg = load_online_config(None, SETS, "pepnet")
    schema = Schema.load(stream / "schema.yaml")
    whole = list(run_online(schema, stream, tmp_path / "whole", cfg))
    f = tmp_path / "whole" / pass_dir(1) / "model.pt"
    assert is_streamed(f) and f.read_bytes()[-72:-64] == MAGIC
    blob = read_checkpoint(f)
    assert blob["format"] == FORMAT and blob["extra"]["pass"] == 1

    # the same content as the old format holds: rewrite it sealed, read it back, compare everything
    g = tmp_path / "old.pt"
    shutil.copy(f, g)
    _old_format(g)
    assert not is_streamed(g)
    old = read_checkpoint(g)
    assert _equal({k: v for k, v in old.items() if k != "format"}, {k: v for k, v in blob.items() if k != "format"})

    # resume from pass 1 (new format) and from pass 1 rewritten in the old format: both equal the whole run
    for name, convert in (("new", False), ("old", True)):
        run = tmp_path / name
        shutil.copytree(tmp_path / "whole", run)
        for k in (2, 3):
            shutil.rmtree(run / pass_dir(k))
        write_current(run, 1)
        if convert:
            _old_format(run / pass_dir(1) / "model.pt")
        got = list(run_online(schema, stream, run, cfg, resume=True))
        assert _strip(got) == _strip(whole[2:]), name
        final = read_checkpoint(run / pass_dir(3) / "model.pt")
        want = read_checkpoint(tmp_path / "whole" / pass_dir(3) / "model.pt")
        assert _equal(final["state_dict"], want["state_dict"]) and _equal(final["extra"]["online"]["index"],
                                                                          want["extra"]["online"]["index"])

    # a flipped byte: one line naming the file, exit 2
    run = tmp_path / "new"
    m = run / pass_dir(3) / "model.pt"
    b = bytearray(m.read_bytes())
    b[len(b) // 2] ^= 0xFF
    m.write_bytes(bytes(b))
    capsys.readouterr()
    assert main(["online", "--passes", str(stream), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(m) in err and "checksum" in err, err
