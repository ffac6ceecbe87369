"""Peak training memory and step FLOPs from a model's config.json and the run settings alone: arithmetic, no torch.

Memory is the sum of what one process holds at the peak (the backward of a micro-batch, after the optimizer
state exists): weights by dtype and quantization, trainable parameters with their gradients and AdamW state,
the activations autograd saves (all layers, or with checkpointing each layer's input plus one layer rebuilt),
the logits of the loss path, and the runtime itself. Sharding (`Plan.sharding`) divides what ZeRO/FSDP divide.
The per-token activation counts follow what a llama-style decoder layer saves for backward; the CPU runtime is
measured on the default model (bench/RESULTS.md, issue 12). Nothing is added for glibc keeping freed activations:
training with checkpointing on the CPU returns them (tunellm/host_memory.py).

A new loss path is one entry in `logits_bytes`; a new batching one entry in `tokens_per_micro_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

GIB = 2**30
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
QUANT_BYTES = {4: 0.5 + 0.127 / 8, 8: 1.0 + 4 / 64}  # NF4 + double-quantized constants; int8 + fp32 row scales
CPU_RUNTIME = (
    0.45 * GIB
)  # Python, torch, transformers, peft, accelerate and a tokenizer: measured RSS before the weights
CUDA_CONTEXT = 0.5 * GIB

Sharding = Literal["none", "ddp", "zero1", "zero2", "zero3", "fsdp"]
LossPath = Literal["full", "chunked"]
Batching = Literal["padded", "packed"]

# a LoRA target name -> the canonical linear(s) of a decoder layer it adapts
TARGET_ROLES = {
    "q_proj": ("q",), "k_proj": ("k",), "v_proj": ("v",), "o_proj": ("o",),
    "query": ("q",), "key": ("k",), "value": ("v",), "out_proj": ("o",), "wo": ("o",),
    "W_pack": ("qkv",), "query_key_value": ("qkv",), "c_attn": ("qkv",), "qkv_proj": ("qkv",), "Wqkv": ("qkv",),
    "dense": ("o",), "c_proj": ("o",),
    "gate_proj": ("gate",), "up_proj": ("up",), "down_proj": ("down",), "w1": ("gate",), "w3": ("up",),
    "w2": ("down",), "dense_h_to_4h": ("gate", "up"), "dense_4h_to_h": ("down",), "c_fc": ("up",),
    "fc1": ("up",), "fc2": ("down",), "gate_up_proj": ("gate", "up"),
}  # fmt: skip
ALL_ROLES = ("q", "k", "v", "o", "gate", "up", "down")


def _first(raw: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if raw.get(key) is not None:
            return raw[key]
    return default


@dataclass(frozen=True)
class ModelShape:
    """The sizes that set memory and FLOPs, read from config.json field names of the supported families."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool
    gated_mlp: bool

    @classmethod
    def from_config(cls, raw: dict[str, Any]) -> ModelShape:
        text = raw.get("text_config") if isinstance(raw.get("text_config"), dict) else None
        raw = {**raw, **(text or {})}
        hidden = int(_first(raw, "hidden_size", "n_embd", "d_model", "dim"))
        heads = int(_first(raw, "num_attention_heads", "n_head", "num_heads", "n_heads"))
        kv_heads = _first(raw, "num_key_value_heads", "multi_query_group_num", "num_kv_heads", "n_head_kv")
        if kv_heads is None and raw.get("multi_query"):  # falcon-7b: one shared key/value head
            kv_heads = 1
        model_type = raw.get("model_type", "")
        plain_mlp = model_type in ("bloom", "gpt_neox", "falcon", "gpt2", "gpt_bigcode", "opt", "phi")
        return cls(
            hidden=hidden,
            layers=int(_first(raw, "num_hidden_layers", "n_layer", "num_layers", "n_layers")),
            heads=heads,
            kv_heads=int(kv_heads or heads),
            head_dim=int(_first(raw, "head_dim", "kv_channels", default=hidden // heads)),
            intermediate=int(_first(raw, "intermediate_size", "ffn_hidden_size", "n_inner", default=4 * hidden)),
            vocab=int(_first(raw, "vocab_size", "padded_vocab_size")),
            tied=bool(raw.get("tie_word_embeddings", model_type not in ("chatglm", "baichuan"))),
            gated_mlp=not plain_mlp,
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each linear role of one decoder layer."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {"q": (self.hidden, q), "k": (self.hidden, kv), "v": (self.hidden, kv), "o": (q, self.hidden)}
        shapes |= {"up": (self.hidden, self.intermediate), "down": (self.intermediate, self.hidden)}
        if self.gated_mlp:
            shapes["gate"] = (self.hidden, self.intermediate)
        return shapes

    @property
    def layer_params(self) -> int:
        return sum(a * b for a, b in self.linears().values()) + 2 * self.hidden

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def head_params(self) -> int:
        """The output projection's weights when they are not the embedding's (untied)."""
        return 0 if self.tied else self.vocab * self.hidden

    @property
    def params(self) -> int:
        return self.layers * self.layer_params + self.embedding_params + self.head_params + self.hidden


@dataclass(frozen=True)
class Plan:
    """The run settings the estimate depends on; `from_config` in checks/memory.py fills it from a RunConfig."""

    method: str = "lora"  # lora, qlora, ptuning_v2, freeze, full
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ALL_ROLES  # canonical roles (TARGET_ROLES values)
    lora_dropout: float = 0.05
    dora: bool = False
    quant_bits: int | None = None  # qlora: 4 or 8
    optim_bytes: float = 8.0  # per trained parameter: AdamW fp32 = 8, pure bf16 = 4, 8-bit = 2
    pre_seq_len: int = 128
    prefix_hidden: int | None = None  # ptuning_v2 prefix_projection MLP width
    trainable_layers: int = 2  # freeze
    weight_dtype: str = "float32"  # what the frozen weights are held in
    train_dtype: str = "float32"  # what trained weights, their gradients and master copies are held in
    autocast: bool = False  # bf16/fp16 autocast over fp32 weights
    batch: int = 4
    seq_len: int = 256  # the longest row of a padded batch
    cutoff_len: int = 1024  # the row length of packed batches
    tokens_per_batch: int | None = None  # packed: train.tokens_per_batch where set, else batch x cutoff_len
    gradient_checkpointing: bool = False
    loss: LossPath = "full"
    loss_chunk_tokens: int = 1024
    batching: Batching = "padded"
    attention: str = "sdpa"  # sdpa/flash: no seq x seq matrix kept; eager keeps the attention probabilities
    sharding: Sharding = "none"
    world_size: int = 1
    device: Literal["cpu", "cuda"] = "cpu"

    @property
    def activation_bytes(self) -> float:
        return 2.0 if self.autocast or DTYPE_BYTES[self.weight_dtype] == 2 else 4.0


@dataclass
class MemoryEstimate:
    parts: dict[str, float] = field(default_factory=dict)  # name -> bytes, per process
    trainable: int = 0

    @property
    def total(self) -> float:
        return sum(self.parts.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "total_gib": round(self.total / GIB, 3),
            "trainable_params": self.trainable,
            "parts_gib": {k: round(v / GIB, 3) for k, v in self.parts.items()},
        }


def trainable_params(shape: ModelShape, plan: Plan) -> int:
    linears = shape.linears()
    if plan.method in ("lora", "qlora"):
        per_layer = sum(
            plan.lora_r * (a + b) + (b if plan.dora else 0) for r, (a, b) in linears.items() if r in plan.lora_targets
        )
        return shape.layers * per_layer
    if plan.method == "ptuning_v2":
        prefix = plan.pre_seq_len * shape.layers * 2 * shape.kv_heads * shape.head_dim
        if plan.prefix_hidden is None:
            return prefix
        return (
            plan.pre_seq_len * shape.hidden
            + shape.hidden * plan.prefix_hidden
            + plan.prefix_hidden * prefix // plan.pre_seq_len
        )
    if plan.method == "freeze":
        return min(plan.trainable_layers, shape.layers) * shape.layer_params
    return shape.params


def shard_factor(plan: Plan, part: str) -> float:
    """The share of `part` (weights, grads, optimizer) one process holds."""
    n = max(plan.world_size, 1)
    divided = {"zero1": ("optimizer",), "zero2": ("optimizer", "grads"), "zero3": ("optimizer", "grads", "weights")}
    divided["fsdp"] = divided["zero3"]
    return 1 / n if part in divided.get(plan.sharding, ()) else 1.0


def weight_bytes(shape: ModelShape, plan: Plan, trained: int) -> float:
    """Frozen weights (quantized linears for QLoRA) plus trained base weights in the training dtype."""
    layer_linear = shape.layers * sum(a * b for a, b in shape.linears().values())
    rest = shape.params - layer_linear
    if plan.quant_bits:
        frozen = layer_linear * QUANT_BYTES[plan.quant_bits] + rest * DTYPE_BYTES[plan.weight_dtype]
    else:
        frozen = shape.params * DTYPE_BYTES[plan.weight_dtype]
    if plan.method in ("full", "freeze"):  # trained base weights are held in the training dtype instead
        frozen += trained * (DTYPE_BYTES[plan.train_dtype] - DTYPE_BYTES[plan.weight_dtype])
    else:
        frozen += trained * DTYPE_BYTES[plan.train_dtype]  # adapters and prefixes: extra parameters
    return frozen


def tokens_per_micro_batch(plan: Plan) -> int:
    """Padded batches run batch x the longest row (seq_len); packed ones fill their token budget."""
    if plan.batching == "packed" and plan.tokens_per_batch:
        return plan.tokens_per_batch
    return plan.batch * row_length(plan)


def row_length(plan: Plan) -> int:
    return plan.cutoff_len if plan.batching == "packed" else plan.seq_len


def layer_activation_elements(shape: ModelShape, plan: Plan) -> float:
    """Elements autograd saves per token in one decoder layer for the backward."""
    h, i = shape.hidden, shape.intermediate
    q = shape.heads * shape.head_dim
    kv = shape.kv_heads * shape.head_dim
    norms = 2 * 2 * h  # two RMSNorms: input and normalised output
    attention = h + 2 * (q + kv) + 3 * q + q + shape.heads  # qkv input, RoPE in/out, SDPA q/k/v and output, lse
    if plan.attention == "eager":
        attention += 2 * shape.heads * row_length(plan)  # scores and probabilities, seq x seq per head
    mlp = h + (3 if shape.gated_mlp else 1) * i + i  # input, gate/act/up outputs, down input
    adapters = 0.0
    if plan.method in ("lora", "qlora"):
        for role, (a, _) in shape.linears().items():
            if role in plan.lora_targets:
                # peft's dropout writes a fresh copy of the input (plus a 1-byte mask) for each adapter
                copy = a * (1 + 1 / plan.activation_bytes) if plan.lora_dropout > 0 else 0
                adapters += copy + plan.lora_r + (a if plan.dora else 0)
    return norms + attention + q + mlp + adapters


def activation_bytes(shape: ModelShape, plan: Plan) -> float:
    tokens = tokens_per_micro_batch(plan)
    per_layer = layer_activation_elements(shape, plan) * tokens * plan.activation_bytes
    if plan.gradient_checkpointing:
        kept = shape.layers * tokens * shape.hidden * plan.activation_bytes  # each layer's input
        return kept + per_layer  # plus one layer rebuilt during its backward
    layers = shape.layers
    if plan.method == "freeze":  # nothing below the first trained layer is kept
        layers = min(plan.trainable_layers, shape.layers)
    return per_layer * layers


def logits_bytes(shape: ModelShape, plan: Plan) -> float:
    """The loss path's logits at its peak: full logits (model dtype, an fp32 copy when that differs, the saved
    log-softmax and its gradient), or a chunk of rows at a time."""
    rows = tokens_per_micro_batch(plan)
    if plan.loss == "chunked":
        rows = min(rows, plan.loss_chunk_tokens)
    model_dtype = plan.activation_bytes
    per_row = model_dtype + (4 if model_dtype != 4 else 0) + 4 + 4
    return rows * shape.vocab * per_row


def runtime_bytes(plan: Plan) -> float:
    """The process itself: Python, torch, transformers, peft, the tokenizer (CPU RSS, measured), or the CUDA
    context beside the allocator's blocks (GPU)."""
    return CPU_RUNTIME if plan.device == "cpu" else CUDA_CONTEXT


def estimate_memory(shape: ModelShape, plan: Plan) -> MemoryEstimate:
    trained = trainable_params(shape, plan)
    train_bytes = DTYPE_BYTES[plan.train_dtype]
    parts = {
        "weights": weight_bytes(shape, plan, trained) * shard_factor(plan, "weights"),
        "gradients": trained * train_bytes * shard_factor(plan, "grads"),
        "optimizer": trained * plan.optim_bytes * shard_factor(plan, "optimizer"),
        "activations": activation_bytes(shape, plan),
        "logits": logits_bytes(shape, plan),
        "runtime": runtime_bytes(plan),
    }
    if plan.sharding == "ddp" and plan.world_size > 1:  # DDP's all-reduce buckets: a second copy of the gradients
        parts["ddp_buckets"] = parts["gradients"]
    if plan.autocast and plan.method in ("full", "freeze"):  # autocast caches a half copy of each trained weight
        parts["autocast_copies"] = 2.0 * trained
    return MemoryEstimate({k: v for k, v in parts.items() if v}, trained)


def step_flops(shape: ModelShape, plan: Plan, accumulation: int = 1) -> float:
    """Matmul FLOPs of one optimizer step: forward, the backward the method needs, and checkpointing's recompute."""
    layer = 2 * sum(a * b for a, b in shape.linears().values())
    layer += 2 * 2 * row_length(plan) * shape.heads * shape.head_dim  # QK^T and attention x V
    head = 2 * shape.vocab * shape.hidden
    forward = shape.layers * layer + head
    if plan.method == "full":
        backward = 2 * forward
    elif plan.method == "freeze":
        top = min(plan.trainable_layers, shape.layers) * layer
        backward = head + 2 * top
    else:  # adapters and prefixes: gradients flow through every layer, base weights get none
        backward = forward
    recompute = shape.layers * layer if plan.gradient_checkpointing else 0
    return float(forward + backward + recompute) * tokens_per_micro_batch(plan) * accumulation
