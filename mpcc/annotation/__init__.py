"""Reasoning traces for SFT and prior sampling: ask a teacher model, verify, import, write columns.

`mpcc annotate DATASET --teacher ...` (annotate.py) and `mpcc annotate import FILE ...` (importing.py)
both end in `output.write_annotated`, so every trace in a dataset passed the same checks (verify.py).
"""
