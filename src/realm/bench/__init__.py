"""The whole benchmark in one call (``realm bench``): data, every model, both splits, one document.

    realm bench --out runs/bench --doc docs/benchmark.md --force    # 0.5 h, 4 CPU minutes a model; --force replaces the doc
    realm bench --out runs/bench2h --hours 2 --seed 0 --threads 1 --minutes-per-model 15 \\
        --minutes realm_sbk=45 --minutes lstm=45 --models realm,realm_sbk,tau0_sbk,lstm,...   # the real-budget run
    from realm.bench import BenchConfig, run_bench
    run_bench(BenchConfig(out="runs/bench", hours=0.5, minutes_per_model=4))

Steps (each one resumes: rerun the same command after an interruption):

1. **Data.** The standard synthetic benchmark (DESIGN 5): ``SynthConfig(hours, seed=0,
   backend="piper", listener_samples=2)``, written to ``--data`` (default ``OUT/data``); a
   directory that already holds a dataset with the same generator config (``meta.json``,
   parallelism aside) is reused, one with another config is an error.
2. **Models.** REALM, its ablations (``tau0``: tau = 0, plain one-sided ALiBi; ``no_gate``;
   ``no_refine``: coarse only; ``audio_only``: no listener history; ``history_only``: no audio)
   every baseline of :data:`realm.registry.BASELINES` and the multimodal-LM listener
   (:data:`LM_VARIANTS`: ``mmlm`` tiny backbone, ``mmlm_smollm2``), each trained into
   ``OUT/models/<name>/`` with the same feature extractor and a fixed **wall-clock budget**
   (``minutes_per_model``, or a model's own in ``minutes``, ``--minutes NAME=M``; REALM splits
   its training time 75 % stage 1 / 25 % stage 2). Our stochastic, bounded REALM, ``realm_sb``
   (and ``tau0_sb``, its tau = 0 ablation), is the demo checkpoint's recipe: stages 1 and 2 into
   ``OUT/models/<name>/steps12``, then step 3 (:data:`STEP3_MODEL`, :data:`STEP3_TRAIN`) from
   them; its budget splits :data:`STEP3_SHARES`. ``realm_sbk`` (and ``tau0_sbk``) is the demo's
   recipe since 2026-11-30: the same, then step 4 (:data:`STEP4_MODEL`: step 3's recipe again from
   step 3, the decoder told which reaction kind starts), step 3 and 4 half of step 3's share each.
   ``realm_tf_sbk`` (and ``tau0_tf_sbk``) is ``realm_sbk`` whose stage 1 reads the ground truth as each
   window's history for its first 75 % of steps (:data:`VARIANT_TRAIN`: ``teacher_forcing``; its
   calibration times both kinds of step and plans on their mix); steps 3 and 4 roll out.
   ``realm_rw_sbk`` (and ``tau0_rw_sbk``) is ``realm_tf_sbk`` with rotation's loss weights divided by
   10 (``w_rot`` 0.5, ``w_vel`` 1.0) in every step. The
   budget becomes a step count: a short calibration run times the model's real training steps
   (data loading included), then ``max_steps`` = the time left / the step time (rounded to whole
   epochs, because checkpoints are selected on ``val`` at epoch ends). A step count, not a timer,
   so the learning-rate schedules and the staged baselines (VQ-VAE, then tokens) run their whole
   course within the budget. A model already trained there with the same settings is skipped
   (``bench_train.json`` is its record); a REALM run interrupted after stage 1 continues with
   stage 2 (a ``*_sb`` one interrupted in step 3 redoes step 3; a ``*_sbk`` one, steps 3 and 4).
3. **Evaluation.** :func:`realm.eval.evaluate` on ``test`` and ``ood`` (``OUT/eval/<split>/``).
4. **Document.** ``doc`` (default ``docs/benchmark.md``; an existing one is replaced only with
   ``force``, ``--force``): the command, date, machine, dataset,
   per-model budget and steps done, the tables of both splits (with the floor and the oracle
   rows) and a "reading" section computed from the numbers. ``OUT/bench.json`` holds the
   config, ``OUT/bench_results.json`` everything the document says."""

from realm.bench.calibrate import calibrate_baseline, calibrate_realm
from realm.bench.config import (
           BASELINES,
           LM_VARIANTS,
           REALM_VARIANTS,
           BenchConfig,
           default_models,
           harness_model,
)
from realm.bench.data import prepare_benchmark_data
from realm.bench.document import document, reading
from realm.bench.run import run_bench
from realm.bench.training import plan_steps, train_model

__all__ = ["BASELINES", "LM_VARIANTS", "REALM_VARIANTS", "BenchConfig", "calibrate_baseline", "calibrate_realm",
           "default_models", "document", "harness_model", "plan_steps", "prepare_benchmark_data", "reading",
           "run_bench", "train_model"]
