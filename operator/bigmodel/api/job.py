"""BigModelJob: distributed PyTorch training on a Ray cluster."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from bigmodel.api.common import Model, NodeGroup, ObjectMeta, ObservedStatus, RayClusterSpec
from bigmodel.api.wire import API_VERSION

BuiltinTask = Literal["digits", "gpt", "causal-lm"]
Precision = Literal["auto", "fp32", "bf16"]
Strategy = Literal["ddp", "fsdp"]
LearningRateDecay = Literal["constant", "cosine"]
_BUILTIN_ONLY = "applies to workload.builtin; a user loop shards and saves with bigmodel.runtime.sharding"
# A queue name is a label value for Kueue (at most 63 characters) and, for Volcano, PodGroup.spec.queue's pattern.
QUEUE_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SchedulerName = Literal["volcano"]
# A dataset URI ends in its format's suffix, before any ?options of an object-store URI. Character classes rather than
# backslashes: the same text is a Python regex and a CEL string literal.
DATASET_PATTERN = "[.](txt|jsonl)([?].*)?$"
# The API server prices a CEL rule on a string by its longest possible value; a bounded one keeps matches() affordable.
_URI_MAX_LENGTH = 2048


class DigitsOptions(Model):
    """A multilayer perceptron on scikit-learn's bundled 8x8 handwritten digits (no download)."""

    hidden_size: int = Field(128, ge=8, le=65536, description="Width of the two hidden layers.")


class GptOptions(Model):
    """A GPT-style causal transformer trained on bytes of a corpus that ships with Python itself."""

    layers: int = Field(2, ge=1, le=128, description="Transformer blocks.")
    heads: int = Field(2, ge=1, le=128, description="Attention heads per block; must divide embedDim.")
    embed_dim: int = Field(64, ge=8, le=16384, description="Width of the residual stream.")
    context_length: int = Field(64, ge=8, le=16384, description="Tokens (bytes) per training sequence.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout probability.")
    corpus_megabytes: float = Field(
        4.0,
        gt=0,
        le=1024,
        description="How much of the Python standard library's source to train on, in MB.",
    )

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "self.embedDim % self.heads == 0", "message": "embedDim must be a multiple of heads"}
            ]
        }
    }

    @model_validator(mode="after")
    def _heads_divide_width(self) -> GptOptions:
        if self.embed_dim % self.heads:
            raise ValueError(f"embedDim ({self.embed_dim}) must be a multiple of heads ({self.heads})")
        return self


class CausalLmOptions(Model):
    """A pretrained Hugging Face causal language model, fine-tuned on a text dataset; nothing is downloaded."""

    model: str = Field(
        ...,
        min_length=1,
        max_length=_URI_MAX_LENGTH,
        description="The pretrained model: a Hugging Face model directory (config.json, *.safetensors weights, "
        "tokenizer files) as a path on every pod or an object-store URI (s3://, gs://).",
    )
    dataset: str = Field(
        ...,
        min_length=1,
        max_length=_URI_MAX_LENGTH,
        description="The training text: a .txt file (one document) or a .jsonl file (one document a line, in its "
        '"text" field), as a path on every pod or an object-store URI.',
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": f"self.matches('{DATASET_PATTERN}')", "message": "must be a .txt or .jsonl file"}
            ]
        },
    )
    context_length: int = Field(128, ge=8, le=131072, description="Tokens per training sequence.")

    @field_validator("dataset")
    @classmethod
    def _known_format(cls, dataset: str) -> str:
        if not re.search(DATASET_PATTERN, dataset):
            raise ValueError(f"must be a .txt or .jsonl file, not {dataset!r}")
        return dataset


# Each task's options field; the wire names are their camelCase aliases.
_OPTION_FIELDS = {"digits": "digits", "gpt": "gpt", "causal-lm": "causal_lm"}
_CAUSAL_LM_NEEDS_OPTIONS = "task causal-lm needs causalLm options (model and dataset)"


class BuiltinWorkload(Model):
    """A built-in training task that needs no download."""

    task: BuiltinTask = Field(
        ...,
        description="digits (an MLP classifier), gpt (a causal language model trained from scratch) or causal-lm "
        "(a pretrained Hugging Face causal language model, fine-tuned).",
    )
    epochs: int = Field(1, ge=1, le=100000, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps in total, even within an epoch."
    )
    batch_size: int = Field(
        64, ge=1, le=1048576, description="Samples (sequences for gpt and causal-lm) per worker per step."
    )
    learning_rate: float = Field(1e-3, gt=0, le=10, description="Peak learning rate of the AdamW optimizer.")
    seed: int = Field(0, ge=0, description="Seed for initialisation and data order; runs with the same seed match.")
    precision: Precision = Field("auto", description="auto (bf16 autocast on GPU, fp32 on CPU), fp32 or bf16.")
    digits: DigitsOptions | None = Field(None, description="Options of the digits task.")
    gpt: GptOptions | None = Field(None, description="Options of the gpt task.")
    causal_lm: CausalLmOptions | None = Field(None, description="Options of the causal-lm task (required for it).")

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "(!has(self.digits) || self.task == 'digits') && (!has(self.gpt) || self.task == 'gpt') "
                    "&& (!has(self.causalLm) || self.task == 'causal-lm')",
                    "message": "task options must match the task",
                },
                {"rule": "self.task != 'causal-lm' || has(self.causalLm)", "message": _CAUSAL_LM_NEEDS_OPTIONS},
            ]
        }
    }

    @model_validator(mode="after")
    def _options_match_task(self) -> BuiltinWorkload:
        for other, field in _OPTION_FIELDS.items():
            if other != self.task and getattr(self, field) is not None:
                raise ValueError(f"options for {other!r} given, but the task is {self.task!r}")
        if self.task == "causal-lm" and self.causal_lm is None:
            raise ValueError(_CAUSAL_LM_NEEDS_OPTIONS)
        return self

    def task_options(self) -> DigitsOptions | GptOptions | CausalLmOptions:
        """The options of the chosen task, defaults filled in."""
        if self.task == "digits":
            return self.digits or DigitsOptions()
        if self.task == "causal-lm":
            assert self.causal_lm is not None, "validation requires them"
            return self.causal_lm
        return self.gpt or GptOptions()


class EntrypointWorkload(Model):
    """A user train loop, run on every worker by Ray Train: `def train(config: dict) -> None`."""

    function: str = Field(
        ...,
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="The loop as module:function, importable in the runtime image or runtimeEnv.",
    )
    config: dict[str, Any] = Field(
        default_factory=dict,
        description="Passed to the function as its only argument.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )


class Workload(Model):
    """What to train: exactly one of builtin, entrypoint or command."""

    builtin: BuiltinWorkload | None = Field(None, description="A built-in task.")
    entrypoint: EntrypointWorkload | None = Field(None, description="A user train loop run by Ray Train.")
    command: list[str] | None = Field(
        None, min_length=1, description="A raw command run as the Ray job's entrypoint, for full control."
    )

    model_config = Model.model_config | {
        "json_schema_extra": {
            "minProperties": 1,
            "maxProperties": 1,
            "x-kubernetes-validations": [
                {
                    "rule": "[has(self.builtin), has(self.entrypoint), has(self.command)].filter(x, x).size() == 1",
                    "message": "set exactly one of builtin, entrypoint or command",
                }
            ],
        }
    }

    @model_validator(mode="after")
    def _exactly_one(self) -> Workload:
        given = [name for name in ("builtin", "entrypoint", "command") if getattr(self, name) is not None]
        if len(given) != 1:
            found = ", ".join(given) if given else "none"
            raise ValueError(f"set exactly one of builtin, entrypoint or command (found: {found})")
        return self


_MIN_REPLICAS = "minReplicas must be at most replicas"


class WorkerGroup(NodeGroup):
    """The Ray worker pods; one Ray Train worker runs on each."""

    replicas: int = Field(1, ge=1, le=1024, description="Number of worker pods, and of data-parallel workers.")
    min_replicas: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="Elastic training: when workers are lost, the run goes on with as few as this (resharded from the "
        "latest checkpoint, the global batch kept by gradient accumulation) and grows back to replicas at a "
        "checkpoint when their pods return; null: always replicas.",
    )

    model_config = NodeGroup.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "!has(self.minReplicas) || self.minReplicas <= self.replicas", "message": _MIN_REPLICAS}
            ]
        }
    }

    @model_validator(mode="after")
    def _min_within_replicas(self) -> WorkerGroup:
        if self.min_replicas is not None and self.min_replicas > self.replicas:
            raise ValueError(_MIN_REPLICAS)
        return self

    def worker_range(self) -> tuple[int, int]:
        """The fewest and the most data-parallel workers a run may have."""
        return (self.min_replicas or self.replicas, self.replicas)


class CheckpointSpec(Model):
    """Where and how often training state is saved; a run always resumes from the latest checkpoint."""

    storage: str | None = Field(
        None,
        description=(
            "A directory (a path on volumeClaimName's volume in the cluster, or a local path for `bigmodel train`) "
            "or an object-store URI (s3://, gs://, hdfs://). Defaults to bigmodel-runs/<name> locally."
        ),
    )
    volume_claim_name: str | None = Field(
        None, min_length=1, description="A ReadWriteMany PersistentVolumeClaim mounted at storage on every pod."
    )
    every_steps: int | None = Field(None, ge=1, description="Save every N optimizer steps.")
    every_epochs: int | None = Field(
        None, ge=1, description="Save every N epochs. With neither set, a checkpoint is saved after every epoch."
    )
    keep_last: int = Field(3, ge=1, le=1000, description="Completed checkpoints kept; older ones are deleted.")
    async_save: bool = Field(
        False,
        description="Built-in tasks: copy the state to host memory and write it while training goes on; a "
        "checkpoint still counts only once every worker's shard is written.",
    )

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.volumeClaimName) || (has(self.storage) && self.storage.startsWith('/'))",
                    "message": "volumeClaimName needs storage to be the absolute path where the volume is mounted",
                }
            ]
        }
    }

    @model_validator(mode="after")
    def _claim_needs_path(self) -> CheckpointSpec:
        if self.volume_claim_name and (not self.storage or not self.storage.startswith("/")):
            raise ValueError("volumeClaimName needs storage to be the absolute path where the volume is mounted")
        return self


class TrainingSpec(Model):
    """How the built-in tasks train: parallelism, the optimizer step and the learning-rate schedule."""

    strategy: Strategy = Field(
        "ddp",
        description="ddp (every worker holds the whole model and optimizer) or fsdp (FSDP2: parameters, gradients "
        "and optimizer state sharded over the workers, one unit per transformer block).",
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=4096,
        description="Micro-batches of batchSize per optimizer step on each worker; the global batch is "
        "batchSize x workers x this.",
    )
    max_grad_norm: float | None = Field(
        None, gt=0, description="Clip the global gradient norm to this; null: no clipping."
    )
    warmup_steps: int = Field(0, ge=0, description="Optimizer steps of linear warm-up from 0 to learningRate.")
    learning_rate_decay: LearningRateDecay = Field(
        "constant", description="After warm-up: constant, or cosine decay to minLearningRateRatio x learningRate."
    )
    min_learning_rate_ratio: float = Field(
        0.1, ge=0, le=1, description="Where cosine decay ends, as a fraction of learningRate."
    )
    activation_checkpointing: bool = Field(
        False,
        description="Recompute each transformer block's activations in the backward pass: less memory, ~30% more compute.",
    )
    compile: bool = Field(False, description="torch.compile each transformer block (the first steps compile).")


class FailurePolicy(Model):
    """How many failures the job absorbs before it is Failed."""

    max_restarts: int = Field(
        3, ge=0, le=1000, description="Rebuilds of the whole cluster (failed run, lost head) before Failed."
    )
    max_worker_failures: int = Field(
        3, ge=0, le=1000, description="Worker failures absorbed inside one run by restarting the worker group."
    )
    collective_timeout_seconds: int = Field(
        600,
        ge=10,
        le=86400,
        description="A collective (all-reduce, all-gather, barrier) that waits this long fails its worker, which Ray "
        "Train restarts from the checkpoint, instead of hanging for torch's default 30 minutes.",
    )
    stall_timeout_seconds: int | None = Field(
        None,
        ge=10,
        description="Restart the run from the latest checkpoint (reason Stalled, a restart) when its step has not "
        "moved this long while Running; null: never. Set it above the longest gap between two reported steps.",
    )


class BigModelJobSpec(RayClusterSpec):
    """The desired training job."""

    workload: Workload = Field(..., description="What to train.")
    workers: WorkerGroup = Field(default_factory=WorkerGroup, description="Ray worker pods, one trainer each.")
    head: NodeGroup = Field(default_factory=NodeGroup, description="The Ray head pod (drives the run, no training).")
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec, description="Checkpoint storage and cadence.")
    training: TrainingSpec | None = Field(
        None, description="How the built-in tasks train (strategy, accumulation, clipping, schedule); defaults: DDP."
    )
    failure_policy: FailurePolicy = Field(default_factory=FailurePolicy, description="Restart budgets.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, description="Fail the job (DeadlineExceeded) when it runs longer than this."
    )
    startup_deadline_seconds: int | None = Field(
        1800,
        ge=1,
        description="Fail the job (StartupDeadlineExceeded) when a new Ray cluster has not started its run this long "
        "after it was created (unschedulable pods, image pull or config errors); null waits for ever.",
    )
    suspend: bool = Field(
        False,
        description="Delete the pods, after the run checkpoints, and keep checkpoints and status; false resumes.",
    )
    termination_grace_period_seconds: int = Field(
        120,
        ge=10,
        le=86400,
        description="The pods' grace period: on SIGTERM (node drain, spot reclaim, suspend, rebuild) the run saves a "
        "checkpoint at its next step before Ray stops. Set it above a step plus a checkpoint save.",
    )
    ttl_seconds_after_finished: int | None = Field(
        None, ge=0, description="Delete the job this long after it Succeeded or Failed."
    )
    clean_pod_policy: Literal["All", "None"] = Field(
        "All", description="Pods to delete when the job finishes: All, or None to keep them for debugging."
    )
    runtime_env: dict[str, Any] | None = Field(
        None,
        description="A Ray runtime environment (pip, working_dir, env_vars, ...) for the training processes.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    queue_name: str | None = Field(
        None,
        max_length=63,
        pattern=QUEUE_NAME_PATTERN,
        description="Gang scheduling: the Kueue LocalQueue that admits all of the job's pods together (a Kueue pod "
        "group), or with schedulerName volcano, the Volcano queue of its PodGroup. A change rebuilds the cluster.",
    )
    scheduler_name: SchedulerName | None = Field(
        None,
        description="volcano: Volcano schedules the pods as one PodGroup (all of them or none); the operator must "
        "have it enabled (Helm value gangScheduling.volcano). Unset: the cluster's default scheduler.",
    )

    model_config = RayClusterSpec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "!has(self.training) || has(self.workload.builtin)", "message": f"training {_BUILTIN_ONLY}"},
                {
                    "rule": "!has(self.checkpoint) || !has(self.checkpoint.asyncSave) || !self.checkpoint.asyncSave "
                    "|| has(self.workload.builtin)",
                    "message": f"checkpoint.asyncSave {_BUILTIN_ONLY}",
                },
            ]
        }
    }

    @model_validator(mode="after")
    def _builtin_only(self) -> BigModelJobSpec:
        if self.workload.builtin is None:
            if self.training is not None:
                raise ValueError(f"training {_BUILTIN_ONLY}")
            if self.checkpoint.async_save:
                raise ValueError(f"checkpoint.asyncSave {_BUILTIN_ONLY}")
        return self

    def uses_gpu(self) -> bool:
        return self.workers.resources.gpu > 0

    def training_or_default(self) -> TrainingSpec:
        return self.training or TrainingSpec()


JobPhase = Literal["Pending", "Starting", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]


class WorkerCounts(Model):
    desired: int = Field(0, description="Worker pods the spec asks for.")
    ready: int = Field(0, description="Worker pods running and ready.")
    replaced: int = Field(0, description="Worker pods recreated after a failure, over the job's life.")
    training: int = Field(
        0, description="Workers the run trains on now; an elastic run (minReplicas) may have fewer than desired."
    )


class CheckpointRef(Model):
    path: str = Field(..., description="Where the checkpoint lives.")
    step: int = Field(..., description="Optimizer steps done when it was saved.")
    epoch: int = Field(..., description="Epoch it was saved in (0-based).")
    time: datetime | None = Field(None, description="When it was saved.")


class TrainingMetrics(Model):
    loss: float | None = Field(None, description="Latest training loss.")
    samples_per_second: float | None = Field(None, description="Training throughput over all workers.")
    tokens_per_second: float | None = Field(None, description="Token throughput, for language models.")
    non_finite: list[str] = Field(
        default_factory=list, description="Metrics whose latest value is NaN or infinite (null above): a diverged run."
    )


class Progress(Model):
    percent: int = Field(0, ge=0, le=100, description="Share of the planned steps done.")
    step: int = Field(0, description="Optimizer steps done.")
    total_steps: int | None = Field(None, description="Optimizer steps planned.")
    epoch: int = Field(0, description="Current epoch (0-based).")
    eta_seconds: int | None = Field(None, description="Estimated seconds left at the current speed.")
    steps_redone: int = Field(
        0, description="Steps of this run trained twice: those since the last checkpoint when a worker was lost."
    )
    moved_time: datetime | None = Field(
        None, description="When the step last moved (or the run began running): the stall clock's start."
    )


class BigModelJobStatus(ObservedStatus):
    """Where the job is, computed by the operator."""

    phase: JobPhase = Field(
        "Pending", description="Pending, Starting, Running, Restarting, Succeeded, Failed, Suspended."
    )
    workers: WorkerCounts = Field(default_factory=WorkerCounts, description="Worker pod counts.")
    workers_ready: str = Field("0/0", description="ready/desired workers, for kubectl get.")
    restarts: int = Field(0, description="Cluster rebuilds after a failure so far (counted against maxRestarts).")
    cluster_generation: int = Field(
        0, description="Ray clusters built for this job so far; the current cluster's pods carry it in their names."
    )
    starting_since: datetime | None = Field(
        None,
        description="When the current Ray cluster was created, until its run starts; startupDeadlineSeconds counts "
        "from it.",
    )
    checkpoint_storage: str | None = Field(
        None,
        description="Where this job's checkpoints are, fixed when its first cluster was built: a later change of "
        "the operator's default storage does not move a job away from them.",
    )
    worker_failures: int = Field(0, description="Worker failures absorbed inside runs so far.")
    start_time: datetime | None = Field(None, description="When the job first ran.")
    completion_time: datetime | None = Field(None, description="When the job Succeeded or Failed.")
    last_checkpoint: CheckpointRef | None = Field(None, description="The latest completed checkpoint.")
    skipped_checkpoints: list[str] = Field(
        default_factory=list,
        description="Checkpoints that would not load when the run resumed (corrupt or truncated), passed over for an "
        "older one.",
    )
    metrics: TrainingMetrics = Field(default_factory=TrainingMetrics, description="Latest training metrics.")
    progress: Progress = Field(default_factory=Progress, description="Steps done and time left.")
    model_uri: str | None = Field(None, description="The exported model, once the job Succeeded.")
    ray_job_id: str | None = Field(None, description="Submission id of the current Ray job.")
    dashboard_url: str | None = Field(None, description="In-cluster URL of the Ray dashboard.")


class BigModelJob(Model):
    """A distributed training job."""

    api_version: Literal["bigmodel.dev/v1alpha1"] = Field(API_VERSION, description="bigmodel.dev/v1alpha1")
    kind: Literal["BigModelJob"] = Field("BigModelJob", description="BigModelJob")
    metadata: ObjectMeta
    spec: BigModelJobSpec
    status: BigModelJobStatus | None = None
