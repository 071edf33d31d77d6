# syntax=docker/dockerfile:1
# rglcd CPU image (data prep, registration, `rglcd pipeline submit` from the CronJob): the same packages as the
# training image with torch's CPU build, which leaves out ~5 GB of CUDA libraries (nvidia-*, triton) and so
# starts fast on CPU nodes. Build from the repository root:  make images
# Model caches live under /cache (mount the model-cache PVC there).
ARG PYTHON_IMAGE=python:3.12.12-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# compilers only here, for any dependency that ships no wheel; none of it reaches the final stage
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
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

FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --uid 1000 --user-group --create-home --shell /usr/sbin/nologin rglcd \
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
