"""R-MSD — reliable multi-sample distillation from a black-box teacher (METHODS §3).

One module per concept:

* :mod:`visd.rmsd.config` — the ``rmsd`` config section (defaults from ``schema.yaml`` beside this file);
* :mod:`visd.rmsd.quality` — quality ``q_k = 1[valid] · Metric`` per task type, R_outer / R_task checks;
* :mod:`visd.rmsd.pool` — the ``teacher_pool`` stage: K teacher samples per input, filter (q ≥ τ), matching
  probabilities, fallbacks; pairing of student rollouts with teacher responses;
* :mod:`visd.rmsd.stage1` — Stage-1 SFT on the best kept teacher response per input;
* :mod:`visd.rmsd.discriminator` — D_φ (student backbone + scalar head), the pairwise loss, warm-up and
  online updates, save / resume;
* :mod:`visd.rmsd.stage2` — the Stage-2 rewards table (R = α·D + β·R_outer + η·R_task + δ·R_content and
  group advantages), read unchanged by ``visd train`` (recipe grpo, KL to the Stage-1 model).
"""
