"""Benchmark metrics as pure functions: V-STaR (:mod:`visd.eval.vstar`, METHODS §6) and multiple-choice
accuracy (:mod:`visd.eval.mcq`). They read raw completion texts and ground truth, never models or files;
the ``evaluate`` stage runs the model, asks the judge and hands the items to these ``summarize`` functions.
"""
