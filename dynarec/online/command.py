"""The ``dynarec online`` verb: arguments -> (schema, config) -> :func:`dynarec.online.runner.run_online`; one
JSON line per pass with ``--json`` (then the run's summary as the last line), else one readable line per pass.

With ``--resume`` the schema and config are the run's own (``RUN/online.json``); ``--schema`` / ``--model`` /
``--config`` / ``--set`` may be repeated but must not change them (a one-line error says which key differs)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from dynarec.config import apply_overrides, build_dataclass, to_dict
from dynarec.errors import ConfigError, DynarecError


def _diff(a: dict, b: dict, pre: str = "") -> str | None:
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            d = _diff(x, y, f"{pre}{k}.")
            if d:
                return d
        elif x != y:
            return f"{pre}{k}"
    return None


def resolve(a):
    """-> (schema, OnlineExperiment) for the parsed arguments ``a``."""
    from dynarec.data.schema import Schema
    from dynarec.online.config import OnlineExperiment, load_online_config
    from dynarec.online.runner import RUN_FILE

    if not a.resume:
        for flag, v in (("--schema", a.schema), ("--model", a.model)):
            if v is None:
                raise DynarecError(f"online: {flag} is required (unless --resume continues a run)")
        return Schema.load(a.schema), load_online_config(a.config, a.set, a.model)
    f = Path(a.out) / RUN_FILE
    if not f.exists():
        raise DynarecError(f"{a.out}: no online run to resume (no {f})")
    try:
        saved = json.loads(f.read_text())
        cfg_d, schema = saved["config"], Schema.from_dict(saved["schema"], str(f))
    except (ValueError, KeyError, TypeError):
        raise DynarecError(f"{f}: not a readable online run file") from None
    if isinstance(cfg_d, dict) and isinstance(cfg_d.get("online"), dict):
        cfg_d["online"].setdefault("auto_batch", False)  # a run recorded before the key: its fixed batch size
    cfg = build_dataclass(OnlineExperiment, cfg_d, str(f))
    if a.config:
        new = to_dict(load_online_config(a.config, a.set, a.model))
    else:
        d = json.loads(json.dumps(cfg_d))
        if a.model is not None:
            d["model"] = a.model
        new = to_dict(build_dataclass(OnlineExperiment, apply_overrides(d, a.set or []), "config"))
    key = _diff(new, to_dict(cfg))
    if key:
        raise ConfigError(f"online --resume: {key} differs from the run's config in {f} (a resumed run keeps its config)")
    if a.schema and Schema.load(a.schema).to_dict() != schema.to_dict():
        raise ConfigError(f"online --resume: {a.schema} differs from the run's schema in {f}")
    return schema, cfg


def _line(r: dict) -> str:
    auc = ", ".join(f"{t} {v['all']:.4f}" for t, v in r["auc"].items() if v.get("all") is not None) or "n/a"
    return (f"pass {r['pass']} ({r['file']}): {r['rows']:,} rows, progressive AUC {auc}; {r['table_rows']:,} slots "
            f"(+{r['admitted']:,} admitted, -{r['evicted']:,} evicted, -{r['expired']:,} expired); delta "
            f"{r['delta_rows']:,} rows{' + dense' if r['dense_in_delta'] else ''}; {r['train_rows_per_s']:,.0f} train rows/s")


def online_command(a) -> int:
    from dynarec.online.runner import final_summary, run_online

    schema, cfg = resolve(a)
    for row in run_online(schema, a.passes, a.out, cfg, resume=a.resume):
        print(json.dumps(row) if a.json else _line(row), flush=True)
        for n, v in row.get("ids_hashed_as_text", {}).items():
            print(f"note: {row['file']}: column '{n}' held integer ids on the first pass; {v['values']} value(s) "
                  f"here are not integers (first: {v['first']!r}) and are read as text ids; the integer ones keep "
                  "their ids", file=sys.stderr)
    if a.json:
        print(json.dumps(final_summary(a.out)))
    else:
        print(f"current: {Path(a.out) / 'current'}", file=sys.stderr)
    return 0
