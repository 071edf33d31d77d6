# syntax=docker/dockerfile:1
# rglcd training image (GPU steps, the PyTorchJob/TrainJob pods): CUDA 13.0 runtime, torch 2.14.1 built for
# CUDA 13.0 (cu130 wheels), rglcd and its pipeline components. Build from the repository root:
#   make images REGISTRY=ghcr.io/rglcd TAG=0.1.0
# Model caches (HF_HOME, TORCH_HOME, rglcd's model.cache_dir) live under /cache: mount the model-cache PVC there.
ARG CUDA_IMAGE=nvidia/cuda:13.0.2-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# compilers only here, for any dependency that ships no wheel; none of it reaches the final stage
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY images/requirements.txt images/requirements-assets.txt images/
RUN pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}" \
    && pip install -r images/requirements.txt \
    && pip install --no-deps -r images/requirements-assets.txt
COPY pyproject.toml README.md ./
COPY rglcd rglcd
COPY components components
COPY pipelines pipelines
RUN pip install --no-deps . && rglcd --help >/dev/null

FROM ${CUDA_IMAGE} AS runtime
ENV DEBIAN_FRONTEND=noninteractive
# Ubuntu 24.04 ships user `ubuntu` as uid 1000: the manifests run as 1000, so that uid becomes `rglcd`
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin rglcd \
    && mkdir -p /cache /checkpoints \
    && chown 1000:1000 /cache /checkpoints
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    TORCH_HOME=/cache/torch \
    XDG_CACHE_HOME=/cache \
    MPLCONFIGDIR=/tmp/matplotlib \
    HF_HUB_DISABLE_TELEMETRY=1
USER 1000:1000
WORKDIR /home/rglcd
CMD ["rglcd", "--help"]
