"""Online training by passes (``dynarec online``): config and preset (``config.py``, ``preset.py``), the model's
schema over one shared dynamic table (``schema.py``), raw ids (``ids.py``), fresh rows for admitted ids
(``rows.py``), the run state (``state.py``), the pass loop (``runner.py``), deltas (``delta.py``) and the
``current`` marker (``marker.py``)."""
