# One image for the whole production stack: `r3 migrate`, `r3 serve` (vLLM on a GPU) and `r3 train`.
#
#   docker build -t r3 .          (docker compose builds it for you)
#   docker build --build-arg EXTRA_PIP=deepspeed -t r3 .    (for deploy/accelerate/deepspeed-zero3.yaml)
#
# The base is plain Python: the CUDA build of torch and vLLM's kernels come from PyPI as wheels
# that carry their own CUDA runtime, so the host needs only an NVIDIA driver and the NVIDIA
# Container Toolkit.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Triton (under vLLM and torch.compile) builds small C helpers at run time: it needs a C compiler.
# Unpinned: Debian's security updates replace exact versions, and a pin would break the build.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/r3
COPY pyproject.toml README.md ./
COPY r3 ./r3
COPY cli ./cli
COPY server ./server
COPY trainer ./trainer
COPY verifiers ./verifiers
COPY migrations ./migrations
# Multi-GPU training (accelerate launch --config_file /opt/r3/deploy/accelerate/...) and the GPU check
# (bash /opt/r3/scripts/gpu-check.sh).
COPY deploy/accelerate ./deploy/accelerate
COPY scripts ./scripts
# The `vllm` extra pulls vLLM and the CUDA build of torch it is made for (versions: pyproject.toml's);
# EXTRA_PIP adds packages.
ARG EXTRA_PIP=""
# hadolint ignore=DL3013
RUN pip install ".[vllm]" ${EXTRA_PIP}

# Runs as an unprivileged user. The folders the compose file mounts volumes on are made here, owned
# by that user, so fresh named volumes start with the right owner.
RUN useradd --create-home --uid 1000 r3 \
    && mkdir -p /var/lib/r3 /srv/r3/adapters /var/cache/r3/models /var/cache/r3/huggingface \
    && chown -R r3:r3 /var/lib/r3 /srv/r3 /var/cache/r3
# By number, so a runtime that checks for a non-root user (Kubernetes' runAsNonRoot) can tell.
USER 1000:1000
WORKDIR /home/r3

# Where things live in the container; docker-compose.yml mounts volumes on these paths.
ENV R3_DATA_DIR=/var/lib/r3 \
    R3_ADAPTERS_DIR=/srv/r3/adapters \
    R3_MODELS_DIR=/var/cache/r3/models \
    HF_HOME=/var/cache/r3/huggingface \
    R3_HOST=0.0.0.0 \
    R3_PORT=8000

EXPOSE 8000
CMD ["r3", "serve"]
