"""``visd audit``: DuckDB over every table under ``results/``.

Each known table becomes a view over its Parquet files (all shards and phases, with ``phase`` and
``shard`` columns parsed from the path); ``--sql`` runs any query over them and ``--query NAME`` runs a
named one. Tables a stage has not written yet are simply absent, and so are the R-MSD tables (``rmsd_pool``,
``rmsd_discriminator``) of a run without the R-MSD recipe: a query that names an absent view fails with the
list of views found.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb

# view name -> glob under results/
TABLES: dict[str, str] = {
    "samples": "samples.parquet",
    "frames": "frames/shard-*.parquet",
    "rejects": "rejects/**/*.parquet",
    "rollouts": "rollouts/phase-*/shard-*.parquet",
    "rewards": "rewards/phase-*/shard-*.parquet",
    "judge": "judge/phase-*/shard-*.parquet",
    "teacher": "teacher/phase-*/shard-*.parquet",
    "metrics": "metrics/phase-*.parquet",
    "eval": "eval/*/*.parquet",  # eval/start/ (phase -1) and eval/phase-P/
    # R-MSD (config/recipes/rmsd.yaml); absent from other runs. The discriminator tables carry their own
    # ``phase`` (0 for the warm-up) and ``kind`` (warmup | online); the path's phase is then ``phase_1``.
    "rmsd_pool": "rmsd/pool/shard-*.parquet",
    "rmsd_discriminator": "metrics/rmsd-discriminator-*.parquet",
}
RMSD_TAU_GRID = (0.0, 0.2, 0.3, 0.5)  # the τ sweep of the paper's ablation (config/experiments/rmsd-tau*.yaml)

# Columns too heavy to show by default; the view keeps them, `SELECT *` on frames is discouraged.
QUERIES: dict[str, tuple[str, str]] = {
    "rejects_by_reason": (
        "rows set aside by each stage, by reason",
        "SELECT stage, reason, count(*) AS n, any_value(detail) AS example "
        "FROM rejects GROUP BY ALL ORDER BY stage, n DESC",
    ),
    "frames_per_sample": (
        "frames kept per sample: count, span, resized size, encoded bytes",
        "SELECT sample_id, shard, len(frame_indices) AS n_frames, "
        "round(list_min(timestamps), 2) AS first_s, round(list_max(timestamps), 2) AS last_s, "
        "width, height, encoding, list_sum(list_transform(frames, lambda f: octet_length(f))) AS bytes "
        "FROM frames ORDER BY sample_id",
    ),
    "feedback_by_error": (
        "judge diagnoses by task type: answer correctness and error category, with an example feedback",
        "SELECT s.task_type, j.phase, j.answer_correctness, j.temporal_relation, j.spatial_grounding, "
        "j.reasoning_consistency, count(*) AS n, any_value(j.feedback) AS example_feedback "
        "FROM judge j JOIN samples s USING (sample_id) GROUP BY ALL ORDER BY s.task_type, j.phase, n DESC",
    ),
    "rewards_by_phase": (
        "mean reward per phase: total (R5 at the phase's σ, the training signal) and total_p0 (R5 at σ = 4 in "
        "every phase: compare this one across phases), with its standard error and the main terms",
        "SELECT phase, count(*) AS n, round(avg(total), 3) AS total, round(avg(total_p0), 3) AS total_p0, "
        "round(stddev_samp(total_p0) / sqrt(count(*)), 3) AS sem_p0, round(avg(accuracy), 3) AS accuracy, "
        "round(avg(format), 3) AS format, round(avg(think_near_keyframes), 3) AS r5, "
        "round(avg(think_near_keyframes_p0), 3) AS r5_p0 FROM rewards GROUP BY phase ORDER BY phase",
    ),
    "reward_vs_judge": (
        "mean reward terms and advantage per judge verdict (does the judge agree with the rewards?)",
        "SELECT j.phase, j.answer_correctness, j.temporal_relation, j.spatial_grounding, count(*) AS n, "
        "round(avg(r.total), 3) AS total, round(avg(r.accuracy), 3) AS accuracy, "
        "round(avg(r.temporal_iou), 3) AS temporal_iou, round(avg(r.box_iou), 3) AS box_iou, "
        "round(avg(r.format), 3) AS format, round(avg(r.advantage), 3) AS advantage "
        "FROM judge j JOIN rewards r USING (rollout_id) GROUP BY ALL ORDER BY ALL",
    ),
    "judge_parse_status": (
        "judge replies by parse status (ok, repaired, reasked_ok, fallback_rules), attempts and latency",
        "SELECT phase, judge_name, parse_status, count(*) AS n, round(avg(attempts), 2) AS mean_attempts, "
        "round(avg(latency_s), 3) AS mean_latency_s FROM judge GROUP BY ALL ORDER BY ALL",
    ),
    "engine_logprob_gap": (
        "engine vs trainer log-probability gap of the sampled tokens, per phase, shard and engine",
        "SELECT phase, shard, engine, count(*) AS rollouts, sum(len(completion_ids)) AS tokens, "
        "max(trainer_logprob_gap_max) AS max_gap, avg(trainer_logprob_gap_mean) AS mean_gap "
        "FROM rollouts GROUP BY ALL ORDER BY ALL",
    ),
    "teacher_vs_verdict": (
        "per phase and judge verdict: mean log p of the rollout's own tokens under the hinted teacher and under the "
        "student that sampled them, their gap (teacher − student) and the share of rollouts where the teacher is higher "
        "(an informative teacher ranks correct answers above wrong ones)",
        "WITH g AS (SELECT t.phase, j.answer_correctness, t.mean_logprob AS teacher_logp, "
        "list_avg(r.behaviour_logprobs) AS student_logp, t.top1_match FROM teacher t "
        "JOIN rollouts r USING (rollout_id) JOIN judge j USING (rollout_id) WHERE t.n_tokens > 0) "
        "SELECT phase, answer_correctness, count(*) AS n, round(avg(teacher_logp), 4) AS teacher_logp, "
        "round(avg(student_logp), 4) AS student_logp, round(avg(teacher_logp - student_logp), 4) AS gap, "
        "round(avg((teacher_logp > student_logp)::INTEGER), 3) AS teacher_higher, "
        "round(avg(top1_match), 3) AS top1_match FROM g GROUP BY ALL ORDER BY ALL",
    ),
    "eval_scores": (
        "eval score (task metric, %) per benchmark, phase (-1 = start policy) and task type",
        "SELECT benchmark, phase, task_type, count(*) AS n, round(100 * avg(score), 1) AS score, "
        "round(100 * avg(format), 1) AS format FROM eval WHERE variant = 'plain' GROUP BY ALL ORDER BY ALL",
    ),
    "eval_item_feedback": (
        "every eval answer next to the training-time judge's diagnoses of the same sample (null: never trained on)",
        "WITH fb AS (SELECT sample_id, count(*) AS judged_rollouts, "
        "round(avg((answer_correctness = 'correct')::INTEGER), 3) AS judged_correct_rate, "
        "mode(answer_correctness) AS usual_verdict, mode(temporal_relation) AS usual_temporal, "
        "mode(spatial_grounding) AS usual_spatial, arg_max(feedback, phase) AS last_feedback "
        "FROM judge GROUP BY sample_id) "
        "SELECT e.benchmark, e.phase, e.sample_id, e.task_type, e.variant, round(e.score, 3) AS eval_score, "
        "fb.* EXCLUDE (sample_id) FROM eval e LEFT JOIN fb USING (sample_id) "
        "ORDER BY e.benchmark, e.sample_id, e.variant, e.phase",
    ),
    "eval_video_feedback": (
        "eval items joined to the training-time judge verdicts on the same video (other questions about it)",
        "WITH fb AS (SELECT s.video_sha256, count(*) AS judged_rollouts, "
        "round(avg((j.answer_correctness = 'correct')::INTEGER), 3) AS judged_correct_rate, "
        "mode(j.temporal_relation) AS usual_temporal, mode(j.spatial_grounding) AS usual_spatial, "
        "any_value(j.feedback) AS example_feedback "
        "FROM judge j JOIN samples s USING (sample_id) GROUP BY s.video_sha256) "
        "SELECT e.benchmark, e.phase, e.sample_id, e.task_type, round(e.score, 3) AS eval_score, "
        "fb.* EXCLUDE (video_sha256) FROM eval e JOIN samples s USING (sample_id) "
        "LEFT JOIN fb ON fb.video_sha256 = s.video_sha256 WHERE e.variant = 'plain' "
        "ORDER BY e.benchmark, e.sample_id, e.phase",
    ),
    "eval_progress": (
        "per eval question: score of the start policy vs the last phase, and the judge's usual verdict in training",
        "WITH lo AS (SELECT benchmark, sample_id, variant, task_type, arg_min(score, phase) AS first_score, "
        "arg_max(score, phase) AS last_score, min(phase) AS first_phase, max(phase) AS last_phase "
        "FROM eval GROUP BY ALL), "
        "fb AS (SELECT sample_id, mode(answer_correctness) AS usual_verdict FROM judge GROUP BY sample_id) "
        "SELECT lo.*, round(last_score - first_score, 3) AS change, fb.usual_verdict "
        "FROM lo LEFT JOIN fb USING (sample_id) ORDER BY change DESC, sample_id",
    ),
    "rmsd_teacher_quality": (
        "R-MSD teacher pool per task type: responses, quality q (mean, min, quartiles, max), validity, share cut "
        "at max_new_tokens, metric, kept ratio at the run's τ, inputs that fell back",
        "SELECT coalesce(task_type, 'all') AS task_type, coalesce(metric, 'all') AS metric, "
        "count(DISTINCT sample_id) AS inputs, count(*) AS responses, round(avg(valid::INTEGER), 4) AS valid_rate, "
        "round(avg((finish_reason = 'length')::INTEGER), 4) AS truncated_rate, "
        "round(avg(quality), 4) AS q_mean, round(min(quality), 4) AS q_min, "
        "round(quantile_cont(quality, 0.25), 4) AS q_p25, round(quantile_cont(quality, 0.5), 4) AS q_median, "
        "round(quantile_cont(quality, 0.75), 4) AS q_p75, round(max(quality), 4) AS q_max, "
        "round(avg(metric_value), 4) AS metric_mean, round(avg(kept::INTEGER), 4) AS kept_ratio, "
        "count(DISTINCT sample_id) FILTER (WHERE fallback IS NOT NULL) AS fallback_inputs, "
        "min(tau) AS tau, max(k) AS k FROM rmsd_pool "
        "GROUP BY GROUPING SETS ((task_type, metric), ()) ORDER BY grouping(task_type), task_type, metric",
    ),
    "rmsd_kept_by_tau": (
        "R-MSD filter sweep per task type: share of teacher responses with q ≥ τ and of inputs keeping at least "
        "one, for τ in " + ", ".join(f"{t:g}" for t in RMSD_TAU_GRID) + " (from the stored q), and the run's own "
        "τ (its stored kept flags)",
        "WITH grid AS (SELECT unnest([" + ", ".join(f"{t!r}" for t in RMSD_TAU_GRID) + "]::DOUBLE[]) AS tau), "
        "per_input AS ("
        "SELECT p.task_type, p.sample_id, g.tau, 'q >= tau' AS source, count(*) AS n, "
        "count(*) FILTER (WHERE p.quality >= g.tau) AS n_kept FROM rmsd_pool p CROSS JOIN grid g GROUP BY ALL "
        "UNION ALL "
        "SELECT task_type, sample_id, tau, 'run (kept flag)' AS source, count(*) AS n, "
        "count(*) FILTER (WHERE kept) AS n_kept FROM rmsd_pool GROUP BY ALL) "
        "SELECT coalesce(task_type, 'all') AS task_type, source, tau, count(*) AS inputs, "
        "sum(n)::BIGINT AS responses, sum(n_kept)::BIGINT AS kept, round(sum(n_kept) / sum(n), 4) AS kept_ratio, "
        "count(*) FILTER (WHERE n_kept > 0) AS inputs_with_kept, "
        "round(avg((n_kept > 0)::INTEGER), 4) AS inputs_with_kept_ratio FROM per_input "
        "GROUP BY GROUPING SETS ((task_type, source, tau), (source, tau)) "
        "ORDER BY grouping(task_type), task_type, source, tau",
    ),
    "rmsd_discriminator_steps": (
        "R-MSD discriminator per optimizer step, warm-up then each phase: loss, mean D of teacher and student "
        "responses, their gap and the pairwise accuracy (share of pairs with D(T) > D(S))",
        "SELECT phase, kind, step, pairs, round(loss, 4) AS loss, round(d_teacher_mean, 4) AS d_teacher, "
        "round(d_student_mean, 4) AS d_student, round(d_teacher_mean - d_student_mean, 4) AS gap, "
        "round(pair_accuracy, 4) AS pair_accuracy, round(q_mean, 4) AS q_mean, round(grad_norm, 4) AS grad_norm "
        "FROM rmsd_discriminator WHERE step IS NOT NULL ORDER BY kind <> 'warmup', phase, step",
    ),
    "samples_by_task": (
        "samples per split, source and task type",
        "SELECT split, source, task_type, count(*) AS n FROM samples GROUP BY ALL ORDER BY ALL",
    ),
}


def connect(results: str | Path) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """An in-memory DuckDB connection with one view per table found under ``results``."""
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"results folder {results} does not exist; run the workflow first or pass --results")
    con = duckdb.connect()
    found = []
    for name, pattern in TABLES.items():
        if not any(results.glob(pattern)):
            continue
        glob = str(results / pattern).replace("'", "''")
        con.execute(
            f"CREATE VIEW {name} AS SELECT * EXCLUDE (filename), "
            "try_cast(nullif(regexp_extract(filename, 'phase-(\\d+)', 1), '') AS INTEGER) AS phase, "
            "try_cast(nullif(regexp_extract(filename, 'shard-(\\d+)', 1), '') AS INTEGER) AS shard, "
            "filename AS source_file "
            f"FROM read_parquet('{glob}', union_by_name=true, filename=true, hive_partitioning=false)"
        )
        found.append(name)
    return con, found


def run_query(results: str | Path, sql: str) -> duckdb.DuckDBPyRelation:
    con, _ = connect(results)
    return con.sql(sql)


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Query every table under results/ with DuckDB. Views: "
        + ", ".join(TABLES)
        + " (each with phase, shard and source_file columns). Named queries: "
        + "; ".join(f"{k} ({v[0]})" for k, v in QUERIES.items())
    )
    p.add_argument("--results", default="results", help="results folder of a workflow run (default: results)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--sql", help='SQL to run, e.g. "SELECT task_type, count(*) FROM samples GROUP BY 1"')
    g.add_argument("--query", choices=sorted(QUERIES), help="run a named query")
    g.add_argument("--list", action="store_true", help="list the views found and the named queries")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    p.add_argument("--out", help="write the result to this file (.csv, .json or .parquet) instead of stdout")
    p.add_argument("--max-rows", type=int, default=50, help="rows shown in table format (default 50)")


def main(args: argparse.Namespace) -> int:
    try:
        con, found = connect(args.results)
    except FileNotFoundError as e:
        print(f"visd audit: {e}", file=sys.stderr)
        return 2
    if args.list or not (args.sql or args.query):
        print("views:", ", ".join(found) or f"(none: no tables under {args.results})")
        for name, (doc, _) in QUERIES.items():
            print(f"  --query {name:<20} {doc}")
        return 0
    sql = QUERIES[args.query][1] if args.query else args.sql
    try:
        rel = con.sql(sql)
    except duckdb.CatalogException as e:
        absent = [t for t in TABLES if t not in found]
        print(f"visd audit: {e}\nviews available under {args.results}: {', '.join(found) or 'none'}"
              + (f"\nnot written by this run: {', '.join(absent)} (rmsd_* only by the R-MSD recipe, "
                 "config/recipes/rmsd.yaml)" if absent else ""), file=sys.stderr)
        return 2
    except duckdb.Error as e:
        print(f"visd audit: query failed: {e}", file=sys.stderr)
        return 2
    if rel is None:
        return 0
    if args.out:
        out = Path(args.out)
        kind = out.suffix.lstrip(".")
        if kind == "parquet":
            rel.write_parquet(str(out))
        elif kind == "csv":
            rel.write_csv(str(out))
        elif kind == "json":
            rel.to_df().to_json(out, orient="records", indent=2)
        else:
            print(f"visd audit: --out must end in .csv, .json or .parquet, got {out}", file=sys.stderr)
            return 2
        print(f"wrote {out}", file=sys.stderr)
    elif args.format == "csv":
        rel.to_df().to_csv(sys.stdout, index=False)
    elif args.format == "json":
        print(rel.to_df().to_json(orient="records", indent=2))
    else:
        rel.show(max_rows=args.max_rows, max_width=200)
    return 0
