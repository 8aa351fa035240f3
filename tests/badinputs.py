"""Shared named lists of configs for the tests: bad inputs (each must fail validation with one
line, exit 2, before anything exists on disk) and good configs (each must pass it).

A case is (id, recipe, overrides, needles): every needle must appear in the one stderr line. The
needles name the bad value and the valid choices. `{text}` / `{binary}` in an override stand for a
plain-text file / a binary file that the test supplies.
"""
from __future__ import annotations

from typing import NamedTuple


class Case(NamedTuple):
    id: str
    recipe: str
    overrides: list[str]
    needles: tuple[str, ...]


BAD_PRETRAIN = [
    # unknown names, every group
    Case("unknown_model", "pretrain", ["model=huge"], ("model='huge'", "valid: 125m, 1b, hf, qwen2_0p5b, tiny")),
    Case("unknown_task", "pretrain", ["task=sudoku"], ("task='sudoku'", "valid: addition")),
    Case("unknown_precision", "pretrain", ["precision=fp9"], ("precision='fp9'", "valid: bf16")),
    Case("unknown_precision_in_sweep", "pretrain", ["-m", "precision=bf16,fp9"], ("precision='fp9'", "valid:")),
    Case("sweep_cell_with_impossible_shape", "pretrain", ["-m", "precision=bf16,mxfp8", "model.d_ff=400"],
         ("sweep cell precision=mxfp8 (job 1 of 0..1): ", "cannot run mxfp8", "mx_block=32")),
    Case("sweep_cell_of_two_sweeps", "pretrain", ["-m", "seed=0,1", "precision=bf16,mxfp8", "model.d_ff=400"],
         ("sweep cell seed=0,precision=mxfp8 (job 1 of 0..3): ", "cannot run mxfp8")),
    Case("unknown_optim", "pretrain", ["optim=sgd"], ("optim='sgd'", "valid: adamw")),
    Case("unknown_logger", "pretrain", ["logger=tensorboard"], ("logger='tensorboard'", "valid: default, disabled")),
    Case("unknown_monitor", "pretrain", ["monitor=full"], ("monitor='full'", "valid: default, off")),
    Case("unknown_policy", "pretrain", ["policy=panic"], ("policy='panic'", "valid: fallback")),
    Case("unknown_stress", "pretrain", ["stress=storm"], ("stress='storm'", "valid: none, outlier")),
    Case("unknown_engine", "pretrain", ["precision=fp8_tensorwise", "precision.engine=cutlass"],
         ("precision.engine='cutlass'", "valid: auto")),
    Case("unknown_policy_action", "pretrain", ["policy.action=explode"], ("policy.action='explode'", "valid: log")),
    Case("unknown_wandb_mode", "pretrain", ["logger.wandb.mode=loud"], ("logger.wandb.mode='loud'", "valid: auto")),
    Case("unknown_parallel", "pretrain", ["parallel=tp"], ("parallel='tp'", "valid: ddp, fsdp")),
    Case("unknown_device", "pretrain", ["device=tpu"], ("device='tpu'", "valid: auto, cpu")),
    Case("unknown_cpu_half_gemm", "pretrain", ["cpu_half_gemm=fast"], ("cpu_half_gemm=fast", "valid: auto, native, fp32")),
    Case("unknown_shadow_recipe", "pretrain", ["monitor.shadow=[bogus]"], ("'bogus'", "valid: fp8_delayed")),
    Case("unknown_stress_module", "pretrain", ["stress=outlier", "stress.module=layers.9.mlp.down"],
         ("'layers.9.mlp.down'", "valid: layers.0.attn.q")),
    Case("keep_pattern_matches_nothing", "pretrain",
         ["precision=fp8_tensorwise", "precision.keep_high_precision.patterns=[bogus]"], ("'bogus'", "valid: fnmatch")),
    # Hydra's override grammar: an unquoted value is ASCII only; the line gives the quoted form
    Case("run_dir_not_ascii", "pretrain", ["run_dir=runs/démo"],
         ("malformed override run_dir=runs/démo", "'é' is not ASCII",
          """valid: the value in quotes, 'run_dir="runs/démo"'""")),
    Case("sweep_dir_not_ascii", "pretrain", ["-m", "hydra.sweep.dir=runs/démo", "seed=0,1"],
         ("malformed override hydra.sweep.dir=runs/démo", """'hydra.sweep.dir="runs/démo"'""")),
    Case("path_with_reserved_character", "pretrain", ["task=textfile", "task.path=data/a(1).txt"],
         ("malformed override task.path=data/a(1).txt", """'task.path="data/a(1).txt"'""")),
    # -m: where Hydra reads it, and a sweep (a,b) without it
    Case("run_dir_under_multirun", "pretrain", ["-m", "seed=0,1", "run_dir=runs/mine"],
         ("run_dir=runs/mine has no effect under -m", "valid: hydra.sweep.dir=runs/mine")),
    Case("sweep_without_multirun_flag", "pretrain", ["seed=0,1"],
         ("seed=0,1 is a sweep (one job per value) but -m is not given", "valid: add -m")),
    Case("list_written_as_a_sweep", "pretrain", ["monitor.shadow=mxfp8,fp8_rowwise"],
         ("is a sweep, not a list", "valid: monitor.shadow=[mxfp8,fp8_rowwise]")),
    Case("multirun_flag_among_overrides", "pretrain", ["steps=5", "-m", "seed=0,1"],
         ("-m sits between overrides (steps=5 -m seed=0,1)", "valid: python -m recipes.pretrain -m steps=5 seed=0,1")),
    # key typos and types
    Case("key_typo", "pretrain", ["stepz=5"], ("'stepz'", "did you mean steps?", "valid keys")),
    Case("nested_key_typo", "pretrain", ["model.d_modle=64"], ("'model.d_modle'", "did you mean model.d_model?")),
    Case("knob_of_another_scaling", "pretrain", ["precision=fp8_delayed", "precision.act_block=64"],
         ("'precision.act_block'", "valid keys under precision", "amax_history_len")),
    Case("steps_not_an_int", "pretrain", ["steps=abc"], ("steps='abc'", "valid: an integer")),
    Case("resume_not_a_bool", "pretrain", ["resume=maybe"], ("resume='maybe'", "valid: true, false")),
    # ranges
    Case("steps_zero", "pretrain", ["steps=0"], ("steps=0", "valid: > 0")),
    Case("checkpoint_every_zero", "pretrain", ["checkpoint_every=0"], ("checkpoint_every=0", "valid: > 0")),
    Case("batch_size_zero", "pretrain", ["batch_size=0"], ("batch_size=0", "valid: > 0")),
    Case("stop_after_negative", "pretrain", ["stop_after=-1"], ("stop_after=-1", "valid: null")),
    Case("lr_negative", "pretrain", ["optim.lr=-1"], ("optim.lr=-1", "valid: > 0")),
    Case("lr_zero", "pretrain", ["optim.lr=0"], ("optim.lr=0", "valid: > 0")),
    Case("beta_one", "pretrain", ["optim.beta2=1.0"], ("optim.beta2=1.0", "valid: 0 <= beta2 < 1")),
    Case("monitor_interval_negative", "pretrain", ["monitor.interval=-1"], ("monitor.interval=-1", "valid: 0 (off)")),
    Case("overflow_frac_above_one", "pretrain", ["policy.overflow_frac=2"], ("policy.overflow_frac=2", "valid: 0..1")),
    Case("stress_channel_out_of_range", "pretrain", ["stress=outlier", "stress.channel=500"],
         ("stress.channel=500", "valid: 0..383")),
    # model and shapes
    Case("non_positive_model_size", "pretrain", ["model.d_model=0"], ("model.d_model=0", "valid:")),
    Case("heads_do_not_divide_d_model", "pretrain", ["model.n_heads=3"], ("model.n_heads=3", "valid:")),
    Case("task_longer_than_context", "pretrain", ["model.max_seq_len=8"], ("model.max_seq_len=8", "valid:")),
    Case("fp8_shape_not_multiple_of_16", "pretrain", ["precision=fp8_tensorwise", "model.d_model=104"],
         ("[104x104] cannot run fp8_tensorwise", "keep it in high precision")),
    Case("mx_shape_not_multiple_of_block", "pretrain", ["precision=mxfp8", "model.d_ff=400"],
         ("cannot run mxfp8", "mx_block=32")),
    Case("torchao_has_no_delayed", "pretrain", ["precision=fp8_delayed", "precision.engine=torchao"],
         ("no delayed scaling", "valid here: reference")),
    # tasks
    Case("textfile_without_path", "pretrain", ["task=textfile"], ("task.path", "none given")),
    Case("textfile_not_text", "pretrain", ["task=textfile", "task.path={binary}"], ("is not a text file", "valid:")),
    Case("textfile_missing_file", "pretrain", ["task=textfile", "task.path=/nonexistent/corpus.txt"],
         ("'/nonexistent/corpus.txt'", "valid: a plain-text file")),
    Case("textfile_window_zero", "pretrain", ["task=textfile", "task.path={text}", "task.window=0"],
         ("task.window=0", "valid: > 0")),
]

BAD_GRPO = [
    Case("unknown_is_correction", "grpo", ["is_correction=magic"], ("is_correction='magic'", "valid: geo_mask")),
    Case("unknown_is_mode_knob", "grpo", ["is_correction.mode=magic"], ("'magic'", "valid: none")),
    Case("unknown_generator_precision", "grpo", ["generator_precision=fp9"], ("generator_precision='fp9'", "valid:")),
    Case("unknown_kv_cache_dtype", "grpo", ["generator.kv_cache_dtype=int4"], ("'int4'", "valid: auto, fp8")),
    Case("unknown_perturb_target", "grpo", ["generator.perturb.target=activations"],
         ("generator.perturb.target='activations'", "valid: logits, weights")),
    Case("negative_perturb_sigma", "grpo", ["generator.perturb.sigma=-1"], ("generator.perturb.sigma=-1", ">= 0")),
    Case("drift_growth_not_a_ratio", "grpo", ["policy.drift_growth=0.5"], ("policy.drift_growth=0.5", "> 1")),
    Case("longstr_unknown_op", "grpo", ["task=longstr", "task.op=shuffle"], ("task.op='shuffle'", "copy")),
    Case("unknown_loss_agg", "grpo", ["grpo.loss_agg=sum"], ("grpo.loss_agg='sum'", "valid: token_mean")),
    Case("is_cap_negative", "grpo", ["is_correction=tis", "is_correction.cap=-1"], ("cap=-1", "valid:")),
    Case("is_lower_cap_outside_tis", "grpo", ["is_correction=icepop", "is_correction.lower_cap=0.5"],
         ("lower_cap=0.5", "valid:")),
    Case("is_band_inverted", "grpo", ["is_correction=icepop", "is_correction.lo=3"], ("lo=3", "valid:")),
    Case("added_key_typo", "grpo", ["+is_correction.cpa=3"],
         ("unknown config key 'is_correction.cpa'", "did you mean is_correction.cap?")),
    Case("is_cap_inf", "grpo", ["is_correction=tis", "is_correction.cap=inf"],
         ("is_correction.cap=inf truncates nothing", "valid: a finite cap > 0", "is_correction=none")),
    Case("is_hi_nan", "grpo", ["is_correction=icepop", "is_correction.hi=nan"],
         ("is_correction.hi=nan is not a number", "valid: a finite hi >= lo")),
    Case("is_veto_inf", "grpo", ["is_correction.veto=inf"], ("is_correction.veto=inf drops every sequence", "valid:")),
    Case("group_size_one", "grpo", ["grpo.group_size=1"], ("grpo.group_size=1", "valid: >= 2")),
    Case("top_p_above_one", "grpo", ["grpo.top_p=1.5"], ("grpo.top_p=1.5", "valid: 0 < top_p <= 1")),
    Case("minibatches_do_not_divide", "grpo", ["grpo.minibatches=3"], ("grpo.minibatches=3", "valid:")),
    Case("spike_threshold_below_one", "grpo", ["mismatch_spike_threshold=0.5"],
         ("mismatch_spike_threshold=0.5", "valid:")),
    Case("shadow_unknown_before_warmup", "grpo", ["monitor.shadow=[bogus]"], ("'bogus'", "valid: fp8_delayed")),
    Case("textfile_has_no_reward", "grpo", ["task=textfile", "task.path={text}", "task.window=8"],
         ("task=textfile", "valid for grpo: addition, reversal")),
    Case("init_from_missing", "grpo", ["init_from=/nonexistent/run"], ("init_from=/nonexistent/run", "valid:")),
    Case("trainer_fp8_shape", "grpo", ["trainer_precision=mxfp8", "model.d_ff=400"],
         ("trainer_precision:", "cannot run mxfp8")),
    Case("generator_keep_pattern", "grpo",
         ["generator_precision=fp8_blockwise", "generator_precision.keep_high_precision.patterns=[lm_heda]"],
         ("'lm_heda'", "valid: fnmatch")),
]

BAD_INPUTS = BAD_PRETRAIN + BAD_GRPO

GOOD_CONFIGS = [
    ("pretrain", []),
    ("pretrain", ["precision=fp8_delayed", "stress=outlier", "monitor.shadow=[mxfp8,fp8_rowwise]"]),
    ("pretrain", ["precision=mxfp8", "precision.keep_high_precision.patterns=[lm_head,*.attn.*]"]),
    ("pretrain", ["precision=fp16", "policy=fallback", "stop_after=5"]),
    ("grpo", ["trainer_precision=fp8_blockwise", "generator_precision=fp8_blockwise", "is_correction=tis"]),
    ("grpo", ["is_correction=tis", "is_correction.lower_cap=0.5", "grpo.top_p=0.9", "grpo.minibatches=2"]),
]

# model=hf model.path=DIR: a user's own checkpoint directory, each broken one way (tests/hf_dirs.py
# writes them; `{hf_<name>}` stands for that dir). Each is one line, exit 2, before any run dir.
HF_GRPO = ["model=hf", "generator_precision=fp8_tensorwise", "warmup.steps=0"]
BAD_HF = [
    Case("hf_not_a_causal_lm", "grpo", [*HF_GRPO, "model.path={hf_bert}"],
         ("holds a 'bert' model (BertLMHeadModel)", "valid: model_type llama, qwen2, qwen3")),
    Case("hf_vocab_below_tokenizer", "grpo", [*HF_GRPO, "model.path={hf_small_vocab}"],
         ("the tokenizer has 99 tokens but the model's vocabulary is 50", "valid:")),
    Case("hf_no_weights", "grpo", [*HF_GRPO, "model.path={hf_no_weights}"],
         ("holds no weights", "valid: a directory written by save_pretrained")),
    Case("hf_no_tokenizer", "grpo", [*HF_GRPO, "model.path={hf_no_tokenizer}"],
         ("holds no tokenizer files", "valid: a directory with tokenizer.json")),
    Case("hf_truncated_safetensors", "grpo", [*HF_GRPO, "model.path={hf_corrupt}"],
         ("model.safetensors: tensor", "does not fit its", "valid: a complete safetensors file")),
    Case("hf_garbage_safetensors", "pretrain", ["model=hf", "model.path={hf_garbage}"],
         ("corrupt safetensors header", "valid: a complete safetensors file")),
    Case("hf_unknown_rope_type", "pretrain", ["model=hf", "model.path={hf_unknown_rope}"],
         ("rope_type 'warp9'", "valid: default, linear")),
    Case("hf_config_disagrees_with_weights", "pretrain", ["model=hf", "model.path={hf_wrong_shape}"],
         ("gate_proj.weight is [128, 64] in the weights, [96, 64] by config.json", "valid:")),
    Case("hf_dims_do_not_fit_fp8", "grpo", [*HF_GRPO, "model.path={hf_odd_dims}"],
         ("generator_precision:", "[72x72] cannot run fp8_tensorwise")),
    Case("hf_missing_dir", "pretrain", ["model=hf", "model.path=/no/such/model"],
         ("model.path='/no/such/model' holds no config.json", "valid:")),
]
