"""The run configuration, declared once as typed models grouped by concern.

Key names follow transformers' `TrainingArguments` and peft's `LoraConfig` where one exists.
Every field carries a description: `tunellm config example` is generated from them.
The plug-ins' choices come from their registries: data formats from `tunellm.data.formats`, tuning methods and
their options from `tunellm.methods` (through `config/methods.py`); neither import loads torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from tunellm.config.methods import METHOD_CONFIGS, Method, default_method
from tunellm.config.section import Section
from tunellm.data.formats import FORMATS

FORMAT_NAMES = ("auto", *FORMATS.names())  # every registered format; auto detects it


class RopeScaling(Section):
    type: Literal["linear", "dynamic", "yarn", "llama3"] = Field(
        description="linear (position interpolation), dynamic (NTK, rescales only past the native length), "
        "yarn, or llama3 (Llama 3.1's)"
    )
    factor: float = Field(gt=1, description="new length = factor x the native length")
    original_max_position_embeddings: int | None = Field(
        None, gt=0, description="the native length; empty: the checkpoint's max_position_embeddings"
    )
    low_freq_factor: float | None = Field(None, gt=0, description="llama3 only; empty: 1")
    high_freq_factor: float | None = Field(None, gt=0, description="llama3 only; empty: 4")
    beta_fast: float | None = Field(None, gt=0, description="yarn only; empty: 32")
    beta_slow: float | None = Field(None, gt=0, description="yarn only; empty: 1")

    @model_validator(mode="after")
    def options_fit_the_type(self) -> RopeScaling:
        for type_, keys in (("llama3", ("low_freq_factor", "high_freq_factor")), ("yarn", ("beta_fast", "beta_slow"))):
            given = [key for key in keys if getattr(self, key) is not None]
            if given and self.type != type_:
                raise ValueError(f"type {self.type} takes no {' or '.join(given)}; only {type_} does")
        if (self.high_freq_factor or 4.0) <= (self.low_freq_factor or 1.0):
            raise ValueError("high_freq_factor must be greater than low_freq_factor (defaults 4 and 1)")
        if (self.beta_fast or 32.0) <= (self.beta_slow or 1.0):
            raise ValueError("beta_fast must be greater than beta_slow (defaults 32 and 1)")
        return self


class ModelConfig(Section):
    name_or_path: str | None = Field(
        None,
        validation_alias=AliasChoices("name_or_path", "model_name_or_path"),
        description="hub name, local folder or .gguf file; empty means the embedded default (SmolLM2-135M-Instruct)",
    )
    gguf_file: str | None = Field(None, description="GGUF file name inside name_or_path, when it is a folder")
    trust_remote_code: bool = Field(False, description="run model code shipped with the checkpoint (ChatGLM, Baichuan)")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        "auto", description="weights dtype; auto is bf16 where the hardware supports it, fp32 on CPU"
    )
    attn_implementation: Literal["auto", "flash_attention_2", "sdpa", "eager"] = Field(
        "auto", description="attention kernel; auto picks flash-attention when installed, else SDPA"
    )
    rope_scaling: RopeScaling | None = Field(
        None,
        description="stretch RoPE to train past the model's native length, e.g. {type: linear, factor: 4}; "
        "type linear, dynamic, yarn or llama3; options original_max_position_embeddings, "
        "low_freq_factor/high_freq_factor (llama3), beta_fast/beta_slow (yarn)",
    )

    @field_validator("rope_scaling", mode="before")
    @classmethod
    def rope_scaling_is_a_mapping(cls, value: object) -> object:
        if value == "none":
            return None
        if isinstance(value, str):
            raise ValueError(f"give a mapping, e.g. {{type: {value}, factor: 2}}, or set model.rope_scaling.type")
        return value


class DataConfig(Section):
    train: list[str] = Field(default_factory=list, description="training files or globs (.json, .jsonl, .gz, .txt)")
    dev: list[str] = Field(default_factory=list, description="dev files or globs for eval loss and metrics")
    dev_split: float = Field(
        0.0, ge=0, lt=1, description="without dev files: hold out this fraction of train rows (seeded) as the dev set"
    )
    format: Literal[FORMAT_NAMES] = Field("auto", description="data format; auto detects it from the first record")  # type: ignore[valid-type]
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="map the format's field names to this file's, e.g. {prompt: question, response: std_answer}",
    )
    placeholders: dict[str, str] = Field(
        default_factory=dict, description="fill {{key}} placeholders in the data, e.g. {name: tunellm, author: me}"
    )
    text_unit: Literal["line", "file"] = Field("line", description="plain text: one document per line or per file")
    template: str = Field("auto", description="prompt template; auto uses the model family's or the tokenizer's own")
    system: str | None = Field(None, description="system prompt for records that carry none")
    cutoff_len: int = Field(1024, gt=0, description="maximum tokens of a whole tokenized sample")
    max_source_length: int | None = Field(
        None, gt=0, description="maximum prompt tokens per turn (truncated from the left)"
    )
    max_target_length: int | None = Field(
        None, gt=0, description="maximum response tokens per turn (truncated from the right)"
    )
    train_on_prompt: bool = Field(False, description="also train on prompt tokens")
    mask_history: bool = Field(False, description="multi-turn: train only the last assistant turn")
    skip_bad: bool = Field(False, description="skip malformed records, count and list them, instead of stopping")
    num_workers: int = Field(2, ge=1, description="tokenizer threads")
    cache_dir: str | None = Field(None, description="tokenization cache folder; default ~/.cache/tunellm/tokenized")

    @field_validator("train", "dev", mode="before")
    @classmethod
    def one_file_is_a_list(cls, value: object) -> object:
        return [value] if isinstance(value, str) else value


class TrainConfig(Section):
    output_dir: str = Field("runs/latest", description="where checkpoints, logs and the loss curve go")
    per_device_train_batch_size: int = Field(4, gt=0, description="rows per micro-batch")
    per_device_eval_batch_size: int = Field(8, gt=0, description="rows per eval batch")
    gradient_accumulation_steps: int = Field(1, gt=0, description="micro-batches per optimizer step")
    num_train_epochs: float = Field(1.0, gt=0, description="epochs, unless max_steps is set")
    max_steps: int = Field(-1, ge=-1, description="optimizer steps; -1 means use num_train_epochs")
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate")
    lr_scheduler_type: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="learning-rate schedule after warmup"
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="fraction of steps spent warming up")
    warmup_steps: int = Field(0, ge=0, description="warmup steps; overrides warmup_ratio when > 0")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm; 0 disables clipping")
    bf16: bool = Field(False, description="bfloat16 mixed precision")
    fp16: bool = Field(False, description="float16 mixed precision (GPU)")
    seed: int = Field(42, description="seed for weights init, data order and dropout")
    logging_steps: int = Field(10, gt=0, description="log every N optimizer steps")
    save_steps: int = Field(100, gt=0, description="checkpoint every N optimizer steps")
    eval_steps: int = Field(100, gt=0, description="evaluate on the dev set every N optimizer steps")
    save_total_limit: int | None = Field(2, gt=0, description="keep at most N checkpoints (the best is always kept)")
    gradient_checkpointing: bool = Field(False, description="recompute activations to save memory")
    batching: Literal["packed", "padded"] = Field(
        "packed",
        description="packed: rows concatenated into token-budget batches, attention kept within each row (no "
        "padding; falls back to padded where the model cannot pack); padded: rows padded to the longest in a batch",
    )
    tokens_per_batch: int | None = Field(
        None, gt=0, description="packed: tokens per micro-batch; empty: per_device_train_batch_size x data.cutoff_len"
    )
    loss: Literal["chunked", "reference"] = Field(
        "chunked",
        description="chunked: project only trained positions to the vocabulary, in recomputed chunks (less memory "
        "and compute); reference: full logits of every position",
    )
    resume: str = Field(
        "auto",
        description="auto: continue from the newest complete checkpoint in output_dir; never: start fresh "
        "(refused when output_dir holds checkpoints); or a step-N checkpoint folder",
    )
    resume_data_changed: Literal["stop", "restart_epoch"] = Field(
        "stop",
        description="when the training data differs from the checkpoint's: stop (default), or restart_epoch: "
        "continue with the new data from the start of the current epoch's order (tunellm train --force)",
    )
    max_bad_steps: int = Field(
        3, gt=0, description="stop after this many consecutive optimizer steps skipped for a NaN/inf loss or gradient"
    )
    init_adapter: str | None = Field(None, description="adapter folder whose weights training starts from")
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=lambda: ["tensorboard"], description="loggers beside train_log.jsonl; [] or none for none"
    )
    best_metric: str = Field(
        "eval_loss",
        description="dev-set metric that picks the best checkpoint (best.json): eval_loss, or a task metric "
        "such as accuracy, ie_f1, rougeL, exact_match (scored by generation on up to eval.max_rows rows)",
    )
    greater_is_better: bool | None = Field(
        None, description="whether a higher best_metric is better; empty: the metric's own direction"
    )
    distributed: Literal["none", "ddp", "fsdp", "deepspeed"] = Field(
        "none",
        description="engine over several processes (launch with tunellm train --nproc N, torchrun or accelerate "
        "launch): ddp (each process holds the model), fsdp (FSDP2, sharded), deepspeed (ZeRO); none runs as ddp "
        "when several processes are launched",
    )
    zero_stage: Literal[2, 3] | None = Field(
        None,
        description="fsdp/deepspeed: 2 shards optimizer state and gradients, 3 also the weights; empty: 3 for fsdp, "
        "2 for deepspeed",
    )
    offload: Literal["none", "optimizer", "all"] = Field(
        "none",
        description="fsdp/deepspeed: keep state in CPU memory; optimizer (deepspeed), or all (fsdp: parameters, "
        "gradients and optimizer; deepspeed zero_stage 3: optimizer and parameters)",
    )
    ddp_timeout: float = Field(
        1800,
        gt=0,
        description="seconds a process may wait for the others; then every process writes its stack to "
        "output_dir/hang-rank{N}.txt and the run stops naming the stuck ranks",
    )

    @field_validator("report_to", mode="before")
    @classmethod
    def one_reporter_is_a_list(cls, value: object) -> object:
        if value is None or value == "none":
            return []
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def one_precision(self) -> TrainConfig:
        if self.bf16 and self.fp16:
            raise ValueError("bf16 and fp16 cannot both be true")
        return self

    @model_validator(mode="after")
    def distributed_options_fit(self) -> TrainConfig:
        sharded = self.distributed in ("fsdp", "deepspeed")
        if self.zero_stage is not None and not sharded:
            raise ValueError(f"zero_stage applies to distributed=fsdp or deepspeed, not {self.distributed}")
        if self.offload != "none" and not sharded:
            raise ValueError(f"offload applies to distributed=fsdp or deepspeed, not {self.distributed}")
        if self.distributed == "fsdp" and self.offload == "optimizer":
            raise ValueError("FSDP2 offloads parameters, gradients and optimizer together: use offload=all")
        if self.distributed == "fsdp" and self.fp16:
            raise ValueError(
                "distributed=fsdp trains in bf16 or fp32 here (fp16 would need a sharded scaler): use bf16"
            )
        if self.distributed == "deepspeed" and self.offload == "all" and self.zero_stage != 3:
            raise ValueError("deepspeed offloads parameters only with zero_stage=3 (offload=optimizer works with 2)")
        return self


class EvalConfig(Section):
    max_rows: int | None = Field(200, gt=0, description="rows of the dev set scored by generation during training")
    task_metrics: bool | None = Field(
        None,
        description="during training, also generate on the dev set at eval_steps and compute the task metrics; "
        "empty: only when train.best_metric is a task metric",
    )
    group_by: str = Field(
        "auto",
        description="score breakdown: auto (task_dataset, else task_type, else the task kind found in the data), "
        "kind, none, or any record field",
    )
    backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="generation engine of tunellm eval; auto takes vLLM when installed on a CUDA machine"
    )


class GenerateConfig(Section):
    """How replies are generated: chat, predict, eval, the server, and merge's parity check (greedy there)."""

    max_new_tokens: int = Field(128, gt=0, description="longest generated reply in tokens (was eval.max_new_tokens)")
    temperature: float = Field(0.0, ge=0, description="sampling temperature; 0 is greedy")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling: keep the likeliest tokens up to this mass")
    top_k: int = Field(0, ge=0, description="sample among the K likeliest tokens; 0 is off")
    repetition_penalty: float = Field(1.0, gt=0, description="> 1 discourages repeats; 1 is off")
    stop: list[str] = Field(default_factory=list, description="stop strings besides the template's end of turn")
    seed: int | None = Field(None, description="seed for sampling, for repeatable replies; empty: unseeded")
    system: str | None = Field(None, description="system prompt for generation; empty: data.system, as in training")

    @field_validator("stop", mode="before")
    @classmethod
    def one_stop_is_a_list(cls, value: object) -> object:
        if value is None:
            return []
        return [value] if isinstance(value, str) else value

    def system_or(self, data: DataConfig) -> str | None:
        """The system prompt to generate with: this section's, else the one training used."""
        return self.system if self.system is not None else data.system


# keys that moved: a file or override naming the old key sets the new one (saved checkpoints hold the old keys)
MOVED_KEYS = {("eval", "max_new_tokens"): ("generate", "max_new_tokens")}


class RunConfig(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: Method = Field(default_factory=default_method)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)

    @model_validator(mode="before")
    @classmethod
    def moved_keys(cls, raw: object) -> object:
        """An old key's value goes to its new place, unless the new key is set too (then the new one wins)."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        for (section, key), (to_section, to_key) in MOVED_KEYS.items():
            old = raw.get(section)
            if isinstance(old, dict) and key in old:
                old = raw[section] = dict(old)
                value = old.pop(key)
                new = raw.get(to_section)
                new = dict(new) if isinstance(new, dict) else {} if new is None else new
                if isinstance(new, dict):
                    new.setdefault(to_key, value)
                    raw[to_section] = new
        return raw


SECTIONS: dict[str, list[type[Section]]] = {
    "model": [ModelConfig],
    "data": [DataConfig],
    "method": list(METHOD_CONFIGS),
    "train": [TrainConfig],
    "eval": [EvalConfig],
    "generate": [GenerateConfig],
}


__all__ = [
    "FORMAT_NAMES", "MOVED_KEYS", "SECTIONS", "DataConfig", "EvalConfig", "GenerateConfig", "Method", "ModelConfig",
    "RopeScaling", "RunConfig", "Section", "TrainConfig",
]  # fmt: skip
