"""R3's settings: every knob is an `R3_*` environment variable (or a line in `.env`)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

BUNDLED_MODEL = "SmolLM2-135M-Instruct"

# The databases R3 opens (R3_DATABASE_URL's scheme), each with the async driver it opens it through.
ASYNC_DRIVERS = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg", "sqlite": "sqlite+aiosqlite"}
_DATABASE_URL_FIX = ("Fix: postgresql://user:password@host:5432/r3, or sqlite:////absolute/path/r3.db (four "
                     "slashes); or unset it for the embedded SQLite in R3_DATA_DIR")


def _xdg_dir(variable: str, fallback: str) -> Path:
    return Path(os.environ.get(variable) or Path.home() / fallback) / "r3"


_ON_A_CPU = " On a CPU, unless set: {} (a round in minutes; trainer.worker.CPU_ROUND)."


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="R3_", env_file=".env", extra="ignore")

    # --- model and engine ---
    model: str = Field(
        BUNDLED_MODEL,
        description="The bundled model's name, a local transformers folder, or a hub id.",
    )
    served_model_name: str | None = Field(
        None, description="The id clients use for the base model; defaults to the model's folder name."
    )
    engine: Literal["transformers", "vllm"] = Field(
        "transformers", description="transformers: embedded, CPU or one GPU. vllm: production (pip install '.[vllm]').")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the transformers engine, the gate and the trainer run; auto: CUDA when torch "
        "sees a GPU, else the CPU. (vLLM runs where its build runs.)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights' dtype; auto: bfloat16 on CUDA, float32 on the CPU (the fast one there "
        "without AVX512-BF16)."
    )
    max_batch_size: int = Field(8, ge=1, description="Most sequences decoded together in one step.")
    max_num_batched_tokens: int = Field(
        512, ge=1, description="transformers: most tokens one step feeds the model (a token per decoding row, the "
        "rest prompt chunks: chunked prefill, so a long prompt never stalls the others); at least max_batch_size.")
    max_model_len: int | None = Field(
        None, ge=16, description="Prompt + completion limit; defaults to the model's context length."
    )
    default_max_tokens: int = Field(512, ge=1, description="Completion limit when a request names none.")
    max_loras: int = Field(4, ge=1, description="vllm: adapters in one batch (active, pinned and the one being swapped in).")
    max_resident_adapters: int = Field(
        16, ge=1, description="Adapters held in memory at once (transformers: in the model; vllm: max_cpu_loras, at "
        "least R3_MAX_LORAS); more may be registered, the least recently used one no running request uses "
        "leaving first, and a request for one that left waits while it is loaded again.")
    max_lora_rank: int = Field(64, ge=1, description="vllm: the largest LoRA rank it can load.")
    enable_prefix_caching: bool = Field(True, description="Reuse the KV cache of shared prompt prefixes (reflections, "
                                        "retries); both engines.")
    prefix_cache_memory_bytes: int = Field(
        1 << 30, ge=0, description="transformers: most bytes of keys and values its prefix cache keeps (finished "
        "sequences, reused by a later prompt on their adapter that begins with their tokens; a running request's held "
        "until it ends), the least recently used leaving first; 0: none. (vllm keeps its prefix cache in its KV cache.)")
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1, description="vllm on a GPU: its share of GPU memory.")
    cpu_kv_cache_gb: int = Field(2, ge=1, description="vllm on a CPU: KV cache size (VLLM_CPU_KVCACHE_SPACE).")
    kv_block_size: int | None = Field(
        None, ge=1, description="vllm: tokens per KV cache block (vLLM's --block-size), the unit its prefix cache "
        "reuses. Default: 32 on a CPU, where vLLM's own default of 128 reuses a rescue's attempt only in whole "
        "128-token blocks (its answer is recomputed by the reflection, the reflection by the retry); vLLM's own "
        "default elsewhere.")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs each layer is split across.")
    pipeline_parallel_size: int = Field(1, ge=1, description="vllm: stages the layers are split into, one per GPU "
                                        "group (across nodes with ray).")
    distributed_executor_backend: Literal["mp", "ray"] | None = Field(
        None, description="vllm: how it runs its workers past one GPU; mp: processes on this node (vLLM's default), "
        "ray: a Ray cluster, for more than one node.")
    lora_modules: dict[str, Path] = Field(
        default_factory=dict, description='LoRA adapters to load at start, as JSON: {"name": "/path"}.'
    )

    # --- reflect-retry ---
    reflection_max_tokens: int = Field(256, ge=1, description="Length limit of a reflection.")
    webhook_allowed_hosts: list[str] = Field(
        default_factory=list, description="Hosts a webhook verifier may call; none by default."
    )
    webhook_allow_loopback: bool = Field(False, description="Let webhook verifiers call localhost.")
    webhook_secret: SecretStr | None = Field(None, description="Signs webhook bodies (X-R3-Signature, HMAC-SHA256).")
    webhook_timeout_s: float = Field(5.0, gt=0)
    webhook_max_attempts: int = Field(3, ge=1, le=10, description="Tries per webhook call (connection errors, 5xx).")
    judge_base_url: str | None = Field(
        None, description="The model graders' judge (score_model, label_model): an OpenAI-compatible API's /v1 base, "
        "e.g. https://api.openai.com/v1, called at {base}/chat/completions with the grader's JSON schema as "
        "response_format; its host must be allowed as a webhook's is (R3_WEBHOOK_ALLOWED_HOSTS, "
        "R3_WEBHOOK_ALLOW_LOOPBACK). Unset: this server's own model judges, named `base` (or an R3_LORA_MODULES "
        "adapter) in the grader's `model`, its answer held to the schema by constrained decoding.")
    judge_api_key: SecretStr | None = Field(None, description="Sent to R3_JUDGE_BASE_URL as a bearer token.")
    judge_timeout_s: float = Field(30.0, gt=0, description="Most seconds one judge call takes (each try, over HTTP).")
    judge_max_attempts: int = Field(3, ge=1, le=10, description="Tries per call to R3_JUDGE_BASE_URL (connection "
                                    "errors, 5xx, 429), backing off as webhooks do.")
    judge_max_concurrency: int = Field(8, ge=1, description="Most judge calls in flight at once, per process.")

    # --- hot-swap ---
    adapter_poll_s: float = Field(2.0, gt=0, description="How often servers check the active version.")
    adapter_grace_s: float = Field(60.0, ge=0, description="A replaced version stays loaded this long.")

    auto_rollback_min_episodes: int = Field(50, ge=1, description="Judged episodes needed on each side.")
    auto_rollback_alpha: float = Field(0.01, gt=0, lt=1, description="Significance of the rollback test.")
    auto_rollback_check_s: float = Field(30.0, gt=0)

    # --- training (r3 train) ---
    adapters_dir: Path | None = Field(None, description="Where adapter versions live; defaults to <data dir>/adapters.")
    train_min_failures: int = Field(16, ge=1, description="New replayable failures that start a round.")
    train_interval_s: float = Field(3600, gt=0, description="A round also starts this long after the last one.")
    train_max_failures: int = Field(256, ge=1, description="Most failures one round trains on."
                                    + _ON_A_CPU.format(32))
    train_heldout_fraction: float = Field(0.2, gt=0, lt=1, description="Share of prompts kept for the gate.")
    train_num_generations: int = Field(4, ge=2, description="Reflections sampled per failure (GRPO's G).")
    train_learning_rate: float = Field(5e-5, gt=0, description="The LoRA learning rate.")
    train_max_steps: int | None = Field(None, ge=1, description="Cap on optimizer steps per round."
                                         + _ON_A_CPU.format(4))
    # GRPO and LoRA (trainer.grpo.GRPOSettings; the paper's values, where they differ, in their descriptions).
    train_num_epochs: float = Field(1.0, gt=0, description="Passes over a round's failures (unless "
                                    "R3_TRAIN_MAX_STEPS stops it first).")
    train_prompts_per_step: int = Field(2, ge=1, description="Failures per optimizer step and process; a step "
                                        "trains on this many × G reflections (the paper: 256 samples a step).")
    train_gradient_accumulation_steps: int = Field(1, ge=1, description="Passes a step's reflections are split "
                                                   "into (less memory, same step).")
    train_gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass "
                                               "(TRL's default): less memory, more compute (6% slower a step "
                                               "on the bundled model, on the CPU).")
    train_lr_scheduler: str = Field("cosine", description="transformers' scheduler name (the paper: cosine).")
    train_warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Share of a round's steps warming up "
                                      "(the paper: 0.03; a short round spends its first step at rate 0).")
    train_lora_rank: int = Field(16, ge=1, description="LoRA rank of a fresh adapter (a round continues the "
                                 "active adapter's shape).")
    train_lora_alpha: int = Field(32, ge=1, description="LoRA alpha (scale alpha / rank).")
    train_lora_target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="Modules the LoRA adapts, as JSON (default: every attention and MLP projection).")
    train_beta: float = Field(0.001, ge=0, description="KL coefficient to the base model (the paper's 0.001; "
                              "TRL's default is 0).")
    train_epsilon: float = Field(0.2, gt=0, description="PPO clip range (TRL's default).")
    train_temperature: float = Field(1.0, gt=0, description="Sampling temperature of the G reflections.")
    train_retry_temperature: float = Field(0.0, ge=0, description="The retry's temperature (0: greedy, as the "
                                           "gate judges, so the reward judges the reflection).")
    train_max_retry_tokens: int = Field(256, ge=1, description="Retry length limit (also capped by each "
                                        "request's max_tokens).")
    train_max_prompt_tokens: int = Field(2048, ge=1, description="Failures with a longer reflection prompt are "
                                         "left out of a round.")
    train_seed: int = Field(0, description="Seeds a round's sampling and data order.")
    train_shuffle_rewards: bool = Field(False, description="Control experiment only: shuffle the rewards within "
                                        "each group, so no reflection is credited for its own retry (r3 bench "
                                        "learn's control; nothing should be learned).")
    train_report_to: Annotated[list[Literal["tensorboard", "mlflow", "wandb", "trackio"]], NoDecode] = Field(
        default_factory=list, description="Experiment trackers each training round reports to, one run per round "
        "named <scenario>-round-<id> (trainer/tracking.py): any of tensorboard, mlflow, wandb, trackio, "
        "comma-separated or as a JSON list; none by default. Each needs its package (pip install tensorboard, "
        "mlflow-skinny, wandb or trackio); MLflow and wandb read their own variables (MLFLOW_TRACKING_URI, "
        "MLFLOW_EXPERIMENT_NAME, WANDB_PROJECT, WANDB_MODE, ...).")
    train_tracking_dir: Path | None = Field(
        None, description="Where TensorBoard runs go, a folder per round; defaults to <data dir>/runs.")
    train_claim_idle_s: float = Field(60.0, gt=0, description="Stream entries a dead worker left this long are taken over.")
    train_heartbeat_s: float = Field(10.0, gt=0, description="How often the trainer running a round marks it alive.")
    train_stale_after_s: float = Field(
        120.0, gt=0, description="A running round its trainer has not marked alive for this long (several "
        "R3_TRAIN_HEARTBEAT_S) is failed, its trainer presumed dead, by the next trainer or POST /admin/train.")
    train_use_vllm: bool = Field(False, description="Sample the trainer's reflections and retries with vLLM "
                                 "through TRL (GPUs; needs the vllm extra).")
    train_vllm_mode: Literal["colocate", "server"] = Field(
        "colocate", description="colocate: vLLM inside each training process; server: a `trl vllm-serve` process.")
    train_vllm_server_url: str | None = Field(
        None, description="server mode: the `trl vllm-serve` URL, e.g. http://trl-vllm:8000 (TRL's default: "
        "http://0.0.0.0:8000).")
    train_vllm_gpu_memory_utilization: float = Field(
        0.3, gt=0, le=1, description="colocate mode: vLLM's share of each training GPU's memory.")
    gate_alpha: float = Field(0.05, gt=0, lt=1, description="Significance of the gate's one-sided test.")
    gate_tolerance: float = Field(0.05, ge=0, le=1, description="Allowed fall of the mean first-attempt score, on "
                                  "the regression set and in each of its task families (a family's fall must also "
                                  "be significant: trainer/gate.py).")
    gate_regression_size: int = Field(64, ge=0, description="First-attempt successes re-checked by the gate."
                                      + _ON_A_CPU.format(16))
    gate_samples: int = Field(4, ge=1, le=64, description="Reflections the gate samples per held-out failure and "
                              "adapter, each followed by a greedy retry (trainer/gate.py)." + _ON_A_CPU.format(2))
    gate_temperature: float = Field(1.0, ge=0, le=2, description="Temperature of the gate's reflections: the "
                                    "trainer's (R3_TRAIN_TEMPERATURE), so the gate judges the policy GRPO moved; "
                                    "0 with R3_GATE_SAMPLES=1: the greedy gate.")
    gate_probe_file: Path | None = Field(
        None, description="A general-capability probe for the gate (trainer/probe.py): a JSON Lines file of "
        'multiple-choice items, {"question": str, "choices": [str, ...], "answer": index}, each scored by '
        "log-likelihood as lm-evaluation-harness scores multiple_choice tasks, the candidate against the base "
        "model. Unset: no probe. R3 ships no benchmark data.")
    gate_probe_max_drop: float = Field(
        0.02, ge=0, le=1, description="How far the candidate's accuracy on R3_GATE_PROBE_FILE may fall below the "
        "base model's before the gate refuses it (in [0, 1]; one item is 1/items).")
    canary_fraction: float = Field(
        0.0, ge=0, lt=1, description="A candidate the gate accepts first serves this share of its scenario's "
        "unpinned requests as a live canary, until a sequential test on live outcomes promotes or aborts it "
        "(r3/canary.py). 0: promoted at once.")
    canary_margin: float = Field(0.02, ge=0, le=1, description="How much lower than the current version's the "
                                 "canary's first-attempt score and rescue rate may be, and it still be promoted.")
    canary_alpha: float = Field(0.05, gt=0, lt=1, description="The canary test's error rate, however often it is "
                                "looked at: a canary worse than the margin is promoted at most this often.")
    canary_min_episodes: int = Field(30, ge=1, description="Judged episodes of each outcome on each side before "
                                     "the canary test decides.")
    canary_max_episodes: int = Field(10_000, ge=1, description="Canary episodes after which an undecided canary "
                                     "gives up, keeping the current version.")
    canary_max_s: float = Field(7 * 24 * 3600.0, gt=0, description="Seconds after which an undecided canary gives "
                                "up, keeping the current version.")
    canary_check_s: float = Field(30.0, gt=0, description="How often servers run the canary test.")

    # --- storage ---
    data_dir: Path = Field(default_factory=lambda: _xdg_dir("XDG_DATA_HOME", ".local/share"))
    models_dir: Path = Field(
        default_factory=lambda: _xdg_dir("XDG_CACHE_HOME", ".cache") / "models",
        description="Where `r3 model pull` puts the bundled model (re-derivable, hence a cache).",
    )
    database_url: str | None = None
    redis_url: str | None = None
    journal_reserve_bytes: int = Field(
        16 * 1024 * 1024, ge=0, description="Free space the episode journal's disk keeps: with less, a request "
        "that records an episode gets a 503 (Retry-After) before it generates, and /health says not ready.")
    episode_retention_days: float | None = Field(
        None, gt=0, description="Episodes older than this many days are deleted, in batches, by every server at its "
        "start and hourly; kept whatever their age: those a training round used or set aside, a running canary's, "
        "and each scenario's newest failures and passes its next round draws on (r3/store/retention.py). The "
        "dashboard and /admin/stats then count the episodes kept. Unset: episodes are kept forever.")

    # --- the trainer beside the server ---
    trainer: bool = Field(True, description="`r3 serve` also runs `r3 train` in a process of its own, restarted "
                          "if it dies and stopped with the server; off: serve only (the production stack runs "
                          "the trainer as a service of its own).")

    # --- HTTP ---
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: list[SecretStr] = Field(default_factory=list)
    admin_key: SecretStr | None = None
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Larger bodies get a 413.")
    max_schema_bytes: int = Field(
        128 * 1024, ge=1024, description="Most bytes the JSON Schemas of one chat request (tools' parameters, "
        "response_format's, a json_schema verifier's) take together as JSON; more is a 400 naming the schema. "
        "Checking a schema and building its grammar take ~10 µs a byte.")
    strict_request_fields: bool = Field(
        False, description="A request field the server does not know is a 400 naming it; off: ignored, as vLLM "
        "does, and named in the X-R3-Ignored-Fields header and a logged warning.")

    # --- tracing ---
    otel_exporter_otlp_endpoint: str | None = Field(
        None, description="Turns tracing on: each request and each training round is an OpenTelemetry trace, "
        "exported by OTLP to this collector (its base URL, as OTEL_EXPORTER_OTLP_ENDPOINT is: "
        "http://otel-collector:4317 over gRPC, or :4318 with OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf). Unset: "
        "off, unless the standard OTEL_* variables turn it on (r3/telemetry.py).")

    @property
    def adapters_path(self) -> Path:
        return self.adapters_dir or self.data_dir / "adapters"

    @field_validator("database_url")
    @classmethod
    def _a_database_r3_can_open(cls, url: str | None) -> str | None:
        """Checked before anything opens it: a URL, of Postgres or SQLite, a SQLite file by its absolute
        path (the trainer beside the server, or a command run elsewhere, must open the same file)."""
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        if url is None:
            return None
        try:
            parsed = make_url(url)
        except ArgumentError:
            raise ValueError(f"not a database URL. {_DATABASE_URL_FIX}") from None
        scheme = parsed.drivername.partition("+")[0]
        if scheme not in ASYNC_DRIVERS:
            raise ValueError(f"R3 takes postgresql:// or sqlite:// URLs, not {scheme}://. {_DATABASE_URL_FIX}")
        if scheme == "sqlite" and not (parsed.database and Path(parsed.database).is_absolute()):
            raise ValueError(
                f"the SQLite file {parsed.database or '(none: in memory)'!s} is not an absolute path "
                f"(sqlite:/// is followed by a path from the current folder). Fix: "
                f"sqlite:////{(parsed.database or 'var/lib/r3/r3.db').lstrip('/')} (four slashes: an absolute "
                "path), or unset it for the embedded SQLite in R3_DATA_DIR")
        return url

    @property
    def tracking_path(self) -> Path:
        return self.train_tracking_dir or self.data_dir / "runs"

    @field_validator("train_report_to", mode="before")
    @classmethod
    def _trackers_as_a_list(cls, value: Any) -> Any:
        """`tensorboard,mlflow` as transformers' `--report_to` takes it, or a JSON list; `none` or empty: none."""
        if not isinstance(value, str):
            return value
        if value.lstrip().startswith("["):
            import json

            return json.loads(value)
        return [] if value.strip() in ("", "none") else [name.strip() for name in value.split(",")]

    @model_validator(mode="after")
    def _settings_agree(self) -> Settings:
        """Settings that only work together: said with both variables and the fix."""
        if self.max_num_batched_tokens < self.max_batch_size:
            raise ValueError(
                f"R3_MAX_NUM_BATCHED_TOKENS={self.max_num_batched_tokens} is below R3_MAX_BATCH_SIZE="
                f"{self.max_batch_size}: a step would have no room to prefill a prompt. Fix: raise "
                "R3_MAX_NUM_BATCHED_TOKENS (default 512) or lower R3_MAX_BATCH_SIZE")
        if self.train_stale_after_s <= self.train_heartbeat_s:
            raise ValueError(
                f"R3_TRAIN_STALE_AFTER_S={self.train_stale_after_s:g} is not above R3_TRAIN_HEARTBEAT_S="
                f"{self.train_heartbeat_s:g}: every running round would look abandoned. Fix: make "
                "R3_TRAIN_STALE_AFTER_S several heartbeats long (default 120 against 10)")
        return self

    @model_validator(mode="after")
    def _judge_host_allowed(self) -> Settings:
        """The judge is called like a webhook, so its host must be allowed like one (`r3.judge`)."""
        if self.judge_base_url is None:
            return self
        from r3.judge import judge_url_problem  # r3.judge reads these settings
        from verifiers.webhook import WebhookPolicy

        policy = WebhookPolicy(frozenset(self.webhook_allowed_hosts), self.webhook_allow_loopback)
        if problem := judge_url_problem(self.judge_base_url, policy):
            raise ValueError(
                f"R3_JUDGE_BASE_URL={self.judge_base_url!r} cannot be called: {problem}. Fix: add its host to "
                "R3_WEBHOOK_ALLOWED_HOSTS (a JSON list), or R3_WEBHOOK_ALLOW_LOOPBACK=true for a loopback host; "
                "or unset R3_JUDGE_BASE_URL to judge with this server's own model")
        return self


class ConfigurationError(RuntimeError):
    """A setting that cannot work, said in one or two lines that name its `R3_*` variable, the cause
    and the fix (the `r3` command prints it without a traceback)."""


@lru_cache
def get_settings() -> Settings:
    """The settings from the environment and `./.env`; raises `ConfigurationError` naming the variable
    when a value cannot be read (a number that is not one, JSON that is not JSON)."""
    return load_settings()


def load_settings(**options: Any) -> Settings:
    """The settings from the environment and `./.env`, with a command's options over them (by field
    name, e.g. `port=99999` from `--port`; None: not given), each checked the same way. Raises
    `ConfigurationError` naming the variable (and the option, when it came from one)."""
    given = {name: value for name, value in options.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as error:
        first = error.errors()[0]
        if not first["loc"]:  # settings that do not agree (`_settings_agree` names them)
            raise ConfigurationError(f"{first['msg'].removeprefix('Value error, ')}.") from error
        name = str(first["loc"][0])
        source = f"--{name.replace('_', '-')}" if name in given else _source(name)
        shown = f"{_variable(name)}={without_password(first.get('input'))!r} (from {source})"
        if first["type"] == "value_error":  # a validator of ours: its message has the fix
            raise ConfigurationError(f"{shown}: {first['msg'].removeprefix('Value error, ')}.") from error
        raise ConfigurationError(
            f"{shown}: {first['msg']}. Fix: set a valid value, or remove it for the default ({_default(name)}).") \
            from error
    except SettingsError as error:  # a list or map whose JSON does not parse
        name = next((n for n in Settings.model_fields if f'"{n}"' in str(error)), "")
        raise ConfigurationError(
            f"{_variable(name)} (from {_source(name)}) is not valid JSON: {error.__cause__}. Fix: write it as "
            f"JSON, e.g. {_variable(name)}='{_json_example(name)}', or remove it for the default.") from error


def without_password(value: Any) -> Any:
    """A URL's password is never said back (R3_DATABASE_URL, R3_REDIS_URL)."""
    if not isinstance(value, str):
        return value
    try:
        password = urlsplit(value).password
    except ValueError:  # not a URL at all
        return value
    return value.replace(f":{password}@", ":***@", 1) if password else value


def _variable(field: str) -> str:
    return f"R3_{field.upper()}"


def _source(field: str) -> str:
    """Where a setting's value came from: the environment wins over `./.env` (names match in any case)."""
    return "the environment" if _variable(field).lower() in {k.lower() for k in os.environ} else "./.env"


def _default(field: str) -> str:
    info = Settings.model_fields.get(field)
    return "none" if info is None or info.default is None else repr(info.get_default(call_default_factory=True))


def _json_example(field: str) -> str:
    return '{"name": "/path/to/adapter"}' if field == "lora_modules" else '["a", "b"]'
